# Host check of the tensor-core fragment layouts used by kernels/attention.cu.
#
# Emulates one warp's `ldmatrix.x4` (plain and .trans) and `mma.sync.m16n8k16` register
# layouts as the PTX ISA defines them, then runs the kernel's index formulas (Tile swizzle,
# load_a, gemm_nt / gemm_nt_sa, gemm_nn, acc_to_a, frag_row / frag_col) for both head dims and
# compares S = Q K^T, O = P V, S^T = K Q^T and dK = dS^T Q with numpy. It needs no GPU, so a
# layout mistake shows up before a GPU run. The formulas are copied from attention.cu: keep
# the two in step when either changes.
#
# Run: python3 tools/mma_layout_check.py   (needs numpy)
import numpy as np
rng = np.random.default_rng(0)

def offset(D, row, chunk):
    return row * D + ((chunk ^ (row & 7)) << 3)

def store_tile(rows, D, M):
    smem = np.zeros(rows * D)
    for r in range(rows):
        for c in range(D // 8):
            o = offset(D, r, c)
            smem[o:o + 8] = M[r, c * 8:(c + 1) * 8]
    return smem

def ldmatrix_x4(smem, addrs, trans=False):
    # addrs[t] = element offset of the 8-element row thread t points at (matrix t // 8, row t % 8)
    mats = [np.array([smem[addrs[8 * i + r]: addrs[8 * i + r] + 8] for r in range(8)]) for i in range(4)]
    regs = [[None] * 4 for _ in range(32)]
    for t in range(32):
        for i in range(4):
            m = mats[i].T if trans else mats[i]
            regs[t][i] = (m[t // 4, 2 * (t % 4)], m[t // 4, 2 * (t % 4) + 1])
    return regs

def mma(acc, a, b0, b1):
    # acc[t] = [c0..c3], a[t] = 4 pairs, b0[t], b1[t] pairs
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for t in range(32):
        g, c = t // 4, t % 4
        A[g, 2 * c:2 * c + 2] = a[t][0]; A[g + 8, 2 * c:2 * c + 2] = a[t][1]
        A[g, 2 * c + 8:2 * c + 10] = a[t][2]; A[g + 8, 2 * c + 8:2 * c + 10] = a[t][3]
        B[2 * c:2 * c + 2, g] = b0[t]; B[2 * c + 8:2 * c + 10, g] = b1[t]
    C = A @ B
    for t in range(32):
        g, c = t // 4, t % 4
        acc[t][0] += C[g, 2 * c]; acc[t][1] += C[g, 2 * c + 1]
        acc[t][2] += C[g + 8, 2 * c]; acc[t][3] += C[g + 8, 2 * c + 1]

def load_a(D, ksteps, smem, r0):
    a = [[None] * ksteps for _ in range(32)]
    for ks in range(ksteps):
        addrs = [offset(D, r0 + (l % 8) + 8 * ((l // 8) % 2), 2 * ks + l // 16) for l in range(32)]
        regs = ldmatrix_x4(smem, addrs)
        for l in range(32):
            a[l][ks] = regs[l]
    return a

def gemm_nt(D, NT, ksteps, acc, a, b_smem):
    for ks in range(ksteps):
        for j in range(0, NT, 2):
            addrs = [offset(D, j * 8 + (l % 8) + 8 * (l // 16), 2 * ks + (l // 8) % 2) for l in range(32)]
            b = ldmatrix_x4(b_smem, addrs)
            mma(acc[j], [a[l][ks] for l in range(32)], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
            mma(acc[j + 1], [a[l][ks] for l in range(32)], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])

def gemm_nn(D, ksteps, acc, a, b_smem):
    for ks in range(ksteps):
        for j in range(0, D // 8, 2):
            addrs = [offset(D, ks * 16 + (l % 8) + 8 * ((l // 8) % 2), j + l // 16) for l in range(32)]
            b = ldmatrix_x4(b_smem, addrs, trans=True)
            mma(acc[j], [a[l][ks] for l in range(32)], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
            mma(acc[j + 1], [a[l][ks] for l in range(32)], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])

def acc_to_a(NT, acc):
    return [[((acc[2 * k][l][0], acc[2 * k][l][1]), (acc[2 * k][l][2], acc[2 * k][l][3]),
              (acc[2 * k + 1][l][0], acc[2 * k + 1][l][1]), (acc[2 * k + 1][l][2], acc[2 * k + 1][l][3]))
             for k in range(NT // 2)] for l in range(32)]

def acc_matrix(NT, acc):
    M = np.zeros((16, NT * 8))
    for j in range(NT):
        for l in range(32):
            for e in range(4):
                row = l // 4 + 8 * (e // 2); col = 8 * j + 2 * (l % 4) + (e % 2)
                M[row, col] = acc[j][l][e]
    return M

def zero(NT):
    return [[[0.0] * 4 for _ in range(32)] for _ in range(NT)]

for D in (64, 128):
    BM = BN = 64
    Q = rng.standard_normal((BM, D)); K = rng.standard_normal((BN, D)); V = rng.standard_normal((BN, D))
    sQ, sK, sV = store_tile(BM, D, Q), store_tile(BN, D, K), store_tile(BN, D, V)
    for warp in range(4):
        r0 = warp * 16
        qa = load_a(D, D // 16, sQ, r0)
        s = zero(BN // 8)
        gemm_nt(D, BN // 8, D // 16, s, qa, sK)
        S = acc_matrix(BN // 8, s)
        assert np.allclose(S, Q[r0:r0 + 16] @ K.T), "S = Q K^T"
        pa = acc_to_a(BN // 8, s)
        o = zero(D // 8)
        gemm_nn(D, BN // 16, o, pa, sV)
        assert np.allclose(acc_matrix(D // 8, o), S @ V), "O = P V"
    # dkdv: S^T = K Q^T with an inner query tile of kM rows, then dK += dS^T Q.
    kM = 64 if D == 64 else 32
    Qi = rng.standard_normal((kM, D)); sQi = store_tile(kM, D, Qi)
    for warp in range(4):
        r0 = warp * 16
        ka = load_a(D, D // 16, sK, r0)
        st = zero(kM // 8)
        gemm_nt(D, kM // 8, D // 16, st, ka, sQi)
        ST = acc_matrix(kM // 8, st)
        assert np.allclose(ST, K[r0:r0 + 16] @ Qi.T), "S^T = K Q^T"
        dk = zero(D // 8)
        gemm_nn(D, kM // 16, dk, acc_to_a(kM // 8, st), sQi)
        assert np.allclose(acc_matrix(D // 8, dk), ST @ Qi), "dK += dS^T Q"
    print(f"D={D}: S=QK^T, O=PV, S^T=KQ^T (kM={kM}), dK=dS^T Q layouts all match numpy")

// Checks kernels/include/philox.cuh against the Rust reference (src/rng/mod.rs) on the host.
// Run from the crate root:
//
//   g++ -O2 -std=c++17 -Wall -Wextra -I kernels/include tools/philox_header_check.cpp
//       -o /tmp/philox_header_check && /tmp/philox_header_check
//
// The golden values below are the ones asserted by the Rust test
// `rng::tests::golden_seed42_offset7`: raw lanes and uniforms must match bit for bit,
// normals and logit-normals to 1 ulp (bit for bit with glibc). It also measures the all-float
// Box-Muller against the double one over many elements and fails above 2 ulp. Exit status 1
// on any mismatch.
#include <philox.cuh>

#include <cstdint>
#include <cstdio>
#include <cstring>

static uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Distance in ulps on the ordered integer line, so it is valid across zero.
static uint32_t ulps(float a, float b) {
    const auto ordered = [](float f) {
        const int64_t u = bits(f);
        return (u & 0x80000000) ? 0x80000000 - u : u;
    };
    const int64_t d = ordered(a) - ordered(b);
    return (uint32_t)(d < 0 ? -d : d);
}

int main() {
    int failures = 0;

    // Random123 kat_vectors for philox4x32_10.
    const struct {
        sf_u32x4 ctr;
        uint32_t k0, k1;
        sf_u32x4 want;
    } kats[] = {
        {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
        {{{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u, {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
        {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
         0xa4093822,
         0x299f31d0,
         {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
    };
    for (const auto& k : kats) {
        const sf_u32x4 got = sf_philox4x32_10(k.ctr, k.k0, k.k1);
        const bool ok = std::memcmp(&got, &k.want, sizeof got) == 0;
        failures += !ok;
        std::printf("kat %08x %08x %08x %08x %s\n", got.v[0], got.v[1], got.v[2], got.v[3],
                    ok ? "ok" : "MISMATCH");
    }

    // seed = 42, offset = 7, n = 10, as in the Rust golden test.
    const uint32_t raw[10] = {0x5bbd83b1, 0x68784c85, 0x172067aa, 0x2e6b75b7, 0x8c4a529c,
                              0x22658bcb, 0xe7eb75d9, 0x7fc3c9af, 0x442f2860, 0x65727aa0};
    const uint32_t uniform[10] = {0x3eb77b06, 0x3ed0f09a, 0x3db90338, 0x3e39add4, 0x3f0c4a53,
                                  0x3e09962c, 0x3f67eb75, 0x3eff8792, 0x3e885e52, 0x3ecae4f6};
    const uint32_t normal[10] = {0xbf99a318, 0x3f483a0c, 0x3f6ac550, 0x3ffef420, 0x3f3a85f1,
                                 0x3f51ddeb, 0xbee39353, 0x3b282b0c, 0xbfa58964, 0x3f7c9324};
    const uint32_t logit_normal[10] = {0x3e83b4a2, 0x3f51efab, 0x3f5831fb, 0x3f74da0e,
                                       0x3f4f3fac, 0x3f53c1ae, 0x3ef60b02, 0x3f1f8cda,
                                       0x3e70777b, 0x3f5b2405};
    std::printf(" i raw      uniform  normal   logitn   | f32 normal (ulps)\n");
    for (uint64_t i = 0; i < 10; ++i) {
        const uint32_t x = sf_philox_u32_at(42, 7, i);
        const float u = sf_philox_uniform_at(42, 7, i);
        const float z = sf_philox_normal_at(42, 7, i);
        const float l = sf_philox_logit_normal_at(42, 7, i, 0.5f, 1.3f);
        const float zf = sf_philox_normal_f32_at(42, 7, i);
        float want_z, want_l;
        std::memcpy(&want_z, &normal[i], sizeof want_z);
        std::memcpy(&want_l, &logit_normal[i], sizeof want_l);
        const bool ok = x == raw[i] && bits(u) == uniform[i] && ulps(z, want_z) <= 1 &&
                        ulps(l, want_l) <= 1 && ulps(zf, want_z) <= 2;
        failures += !ok;
        std::printf("%2d %08x %08x %08x %08x | %08x (%u) %s\n", (int)i, x, bits(u), bits(z),
                    bits(l), bits(zf), ulps(zf, want_z), ok ? "ok" : "MISMATCH");
    }

    // The all-float path against the double one. The host sincospif stand-in is more
    // accurate than CUDA's, so this bounds the formula's error, not the device's.
    const uint64_t sweep = 1ull << 24;
    uint32_t worst = 0;
    uint64_t over1 = 0;
    for (uint64_t i = 0; i < sweep; ++i) {
        const uint32_t d =
            ulps(sf_philox_normal_f32_at(1234, 0, i), sf_philox_normal_at(1234, 0, i));
        worst = d > worst ? d : worst;
        over1 += d > 1;
    }
    failures += worst > 2;
    std::printf("f32 vs double normals over %llu elements: max %u ulp, %llu above 1 ulp %s\n",
                (unsigned long long)sweep, worst, (unsigned long long)over1,
                worst <= 2 ? "ok" : "OVER 2 ULP");

    std::printf("%s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}

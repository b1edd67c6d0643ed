//! CPU reference backend: kernels over contiguous f32 slices (lower-precision storage
//! is widened on read and rounded on write by the op layer). Work above
//! `PAR_THRESHOLD` elements is split over rayon's pool; results do not depend on the
//! thread count except for the summation order of reductions.

pub mod attention;
pub mod binary;
pub mod conv;
pub mod embedding;
pub mod fastmath;
pub mod loss;
pub mod matmul;
pub mod modulate;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod rope;
pub mod softmax;
pub mod spectral_norm;
pub mod unary;

/// Below this many elements threading costs more than it saves.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// Number of threads the CPU backend uses (rayon's global pool).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the compute pool and returns its result. Ops called from
/// inside the pool run their parallel parts there (inline on a one-thread pool);
/// called from outside, every parallel op hands its work to the pool and sleeps until
/// a worker has woken up and finished it, a wake-up per op that a loaded machine makes
/// slow. A panic in `f` resumes in the caller.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Sets the thread count once, before any parallel work; later calls are ignored.
///
/// When the pool has exactly one thread per CPU this process may use, worker i is
/// pinned to the i-th of those CPUs. Unpinned, the scheduler tends to wake a worker on
/// the CPU of the thread that woke it (still busy with its own half of the work) when
/// the other CPUs run other processes, and the woken worker only starts once the
/// waker is done: every parallel op ran serially on a loaded 2-CPU machine. Pinning
/// never takes a CPU away from the pool, since it covers them all.
pub fn init_threads(n: usize) {
    let n = n.max(1);
    let cpus = allowed_cpus();
    let pin = n > 1 && cpus.len() == n;
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .start_handler(move |i| {
            if pin {
                pin_current_thread(cpus[i]);
            }
        })
        .build_global();
}

/// The CPUs in this process's affinity mask (empty where it cannot be read).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Best effort: a failure leaves the thread unpinned.
#[cfg(target_os = "linux")]
fn pin_current_thread(cpu: usize) {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_cpu: usize) {}

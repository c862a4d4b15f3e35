/* A persistent pool of worker threads. The calling thread is worker 0, so set_threads(n) starts n-1
 * pthreads. Workers spin briefly for the next job (low latency between back-to-back GEMVs), then sleep
 * on a condition variable. One job at a time: a second caller that finds the pool busy runs its job
 * alone on its own thread instead of waiting.
 *
 * Workers join a job; they are not waited for. Tasks hand out work through an atomic counter, so the
 * caller alone can finish a job. When it has, it closes the job and waits only for the workers that
 * joined before that: on a loaded machine a worker the OS has not scheduled yet costs nothing (with a
 * fork-join barrier every call would wait a scheduler time slice for it). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <sched.h>
#include "pool.h"

#define MAX_THREADS 256

static pthread_mutex_t use_lock = PTHREAD_MUTEX_INITIALIZER;   /* held by the caller of a job */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;

static pthread_t workers[MAX_THREADS];
static int n_threads = 1;             /* including the caller */
static _Atomic unsigned generation;   /* bumped once per job */
/* the current job: bits 63..32 its generation, bit 31 closed, bits 30..0 workers inside it */
static _Atomic uint64_t jstate;
#define J_CLOSED ((uint64_t)1 << 31)
#define J_COUNT ((uint64_t)0x7fffffff)
static _Atomic int sleeping;          /* workers blocked on wake_cond */
static _Atomic int quit;
static pool_task job_fn;
static void *job_arg;
static unsigned start_generation;    /* fixed while workers start (under use_lock) */
static long spin_ns = 100000;         /* how long an idle worker spins before sleeping */
static _Atomic unsigned rest_generation = ~0u;   /* workers done with this job sleep at once (pool_rest) */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *worker_main(void *p) {
    const int ith = (int)(intptr_t)p;
    /* the generation when the pool was (re)started, not when this thread got to run: a job posted
     * before the thread was scheduled must not be missed */
    unsigned seen = start_generation;
    for (;;) {
        long t0 = now_ns();
        int spins = 0;
        while (atomic_load_explicit(&generation, memory_order_acquire) == seen) {
            cpu_relax();
            if ((++spins % 256 == 0 && now_ns() - t0 > spin_ns)
                || atomic_load_explicit(&rest_generation, memory_order_relaxed) == seen) {
                pthread_mutex_lock(&wake_lock);
                atomic_fetch_add(&sleeping, 1);
                while (atomic_load(&generation) == seen) pthread_cond_wait(&wake_cond, &wake_lock);
                atomic_fetch_sub(&sleeping, 1);
                pthread_mutex_unlock(&wake_lock);
            }
        }
        seen = atomic_load_explicit(&generation, memory_order_acquire);
        if (atomic_load(&quit)) return NULL;
        /* join the job unless it is already closed (or a newer one replaced it) */
        uint64_t s = atomic_load_explicit(&jstate, memory_order_acquire);
        int joined = 0;
        while ((uint32_t)(s >> 32) == seen && !(s & J_CLOSED)) {
            if (atomic_compare_exchange_weak_explicit(&jstate, &s, s + 1, memory_order_acq_rel,
                                                      memory_order_acquire)) { joined = 1; break; }
        }
        if (!joined) continue;
        job_fn(job_arg, ith, n_threads);
        atomic_fetch_sub_explicit(&jstate, 1, memory_order_release);
    }
}

static void bump_and_wake(void) {
    pthread_mutex_lock(&wake_lock);   /* pairs with the sleeper's check under the same lock */
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    if (atomic_load(&sleeping)) pthread_cond_broadcast(&wake_cond);
    pthread_mutex_unlock(&wake_lock);
}

static void stop_workers(void) {
    if (n_threads <= 1) return;
    atomic_store(&quit, 1);
    bump_and_wake();
    for (int i = 1; i < n_threads; i++) pthread_join(workers[i], NULL);
    atomic_store(&quit, 0);
    n_threads = 1;
}

int pool_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    const char *s = getenv("CELLAR_SPIN_US");
    if (s) spin_ns = atol(s) * 1000L;
    pthread_mutex_lock(&use_lock);
    if (n != n_threads) {
        stop_workers();
        start_generation = atomic_load(&generation);
        int started = 1;
        for (int i = 1; i < n; i++) {
            if (pthread_create(&workers[i], NULL, worker_main, (void *)(intptr_t)i) != 0) break;
            started++;
        }
        n_threads = started;
    }
    pthread_mutex_unlock(&use_lock);
    return n_threads;
}

int pool_threads(void) { return n_threads; }

void pool_run(pool_task fn, void *arg, int max_threads) {
    if (pthread_mutex_trylock(&use_lock) != 0) {   /* pool busy with another caller */
        fn(arg, 0, 1);
        return;
    }
    if (n_threads == 1 || max_threads <= 1) {
        pthread_mutex_unlock(&use_lock);
        fn(arg, 0, 1);
        return;
    }
    job_fn = fn; job_arg = arg;
    const unsigned gen = atomic_load(&generation) + 1;
    atomic_store_explicit(&jstate, (uint64_t)gen << 32, memory_order_release);
    bump_and_wake();                  /* generation becomes gen */
    fn(arg, 0, n_threads);
    atomic_fetch_or_explicit(&jstate, J_CLOSED, memory_order_acq_rel);
    int spins = 0;
    while (atomic_load_explicit(&jstate, memory_order_acquire) & J_COUNT)
        if (++spins < 100000) cpu_relax(); else sched_yield();
    pthread_mutex_unlock(&use_lock);
}

void pool_rest(void) {
    atomic_store_explicit(&rest_generation, atomic_load(&generation), memory_order_relaxed);
}

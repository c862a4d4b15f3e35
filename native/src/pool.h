#ifndef CELLAR_POOL_H
#define CELLAR_POOL_H
#include <stdint.h>

/* fn(arg, ith, nth) runs on every thread of the pool; the caller is ith 0 */
typedef void (*pool_task)(void *arg, int ith, int nth);

int pool_set_threads(int n);   /* total threads, the caller included; returns how many run */
int pool_threads(void);
/* max_threads <= 1 runs fn on the caller alone (small jobs); otherwise on the whole pool */
void pool_run(pool_task fn, void *arg, int max_threads);
/* workers idle after the last job sleep now instead of spinning for the next one: for a caller that
 * hands the cores to other threads next (engine/ops.py's matmul split) */
void pool_rest(void);

#endif

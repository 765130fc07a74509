/* Adam (torch.optim.Adam's arithmetic, L2 weight decay) on selected rows of float32 tables,
 * for harness_jodie._optim.StaticAdam.
 *
 * adam_rows(w, m, v, width, rows, n_rows, last, target, grad, c_step, c_bc2,
 *           wd, one_minus_b1, b2, one_minus_b2, eps)
 *
 * For each row r = rows[q] of the row-major (?, width) tables w (parameters), m and v (Adam's
 * moments), apply every optimizer step from last[r] + 1 to target and set last[r] = target.
 * Steps before target, and step target itself when grad is 0, have no loss gradient: Adam's
 * gradient is then weight_decay * w alone. When grad is not 0, step target adds grad's row q
 * (grad is (n_rows, width), row-major). Per step s, in float32 with the roundings of torch's
 * single-tensor Adam on CPU (checked bit for bit against torch 2.13's vectorised kernels; fma is
 * one rounding, and the file is compiled with -ffp-contract=off so that nothing else fuses):
 *
 *     g = fma(w, wd, grad)                            grad.add(param, alpha=wd)
 *     m = fma(1 - b1, g - m, m)                       exp_avg.lerp_(g, 1 - b1)
 *     v = fma((1 - b2) * g, g, v * b2)                exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
 *     w = w + (c_step[s] * m) / (sqrt(v) / c_bc2[s] + eps)     param.addcdiv_(m, denom, c_step)
 *
 * with c_step[s] = -lr / (1 - b1^s) and c_bc2[s] = sqrt(1 - b2^s) computed by the caller in
 * double precision and rounded to float, as torch does with its Python-float scalars. Rows must
 * be distinct. Pointers are passed as integers (tensor.data_ptr()); the caller checks dtypes,
 * shapes and contiguity.
 *
 * Denormals are flushed to zero inside the loop (MXCSR FTZ/DAZ, restored afterwards): they only
 * arise as g * g of a weight decayed below ~1e-14, a term far below one unit in the last place
 * of v, so the results are those of unflushed arithmetic while avoiding the microcode assists
 * that make such steps about ten times slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define HAVE_MXCSR 1
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define LANES 64 /* independent elements in flight: hides the sqrt/div latency */

CLONES static void
adam_rows_impl(float *w, float *m, float *v, Py_ssize_t width, const int64_t *rows,
               Py_ssize_t n_rows, int64_t *last, int64_t target, const float *grad,
               const float *c_step, const float *c_bc2, float wd, float omb1, float b2,
               float omb2, float eps)
{
    for (Py_ssize_t q = 0; q < n_rows; q++) {
        int64_t r = rows[q];
        int64_t first = last[r] + 1;
        int64_t zero_end = grad ? target : target + 1; /* steps [first, zero_end) have no grad */
        float *wr = w + r * width, *mr = m + r * width, *vr = v + r * width;
        const float *gr = grad ? grad + q * width : NULL;
        for (Py_ssize_t x0 = 0; x0 < width; x0 += LANES) {
            Py_ssize_t n = width - x0 < LANES ? width - x0 : LANES;
            float wx[LANES], mx[LANES], vx[LANES];
            for (Py_ssize_t j = 0; j < LANES; j++) {
                wx[j] = j < n ? wr[x0 + j] : 0.0f;
                mx[j] = j < n ? mr[x0 + j] : 0.0f;
                vx[j] = j < n ? vr[x0 + j] : 0.0f;
            }
            for (int64_t s = first; s < zero_end; s++) {
                float cs = c_step[s], cb = c_bc2[s];
                for (Py_ssize_t j = 0; j < LANES; j++) {
                    float g = wx[j] * wd;
                    mx[j] = fmaf(omb1, g - mx[j], mx[j]);
                    vx[j] = fmaf(omb2 * g, g, vx[j] * b2);
                    float denom = sqrtf(vx[j]) / cb + eps;
                    wx[j] = wx[j] + (cs * mx[j]) / denom;
                }
            }
            if (gr && target >= first) {
                float cs = c_step[target], cb = c_bc2[target];
                for (Py_ssize_t j = 0; j < n; j++) {
                    float g = fmaf(wx[j], wd, gr[x0 + j]);
                    mx[j] = fmaf(omb1, g - mx[j], mx[j]);
                    vx[j] = fmaf(omb2 * g, g, vx[j] * b2);
                    float denom = sqrtf(vx[j]) / cb + eps;
                    wx[j] = wx[j] + (cs * mx[j]) / denom;
                }
            }
            for (Py_ssize_t j = 0; j < n; j++) {
                wr[x0 + j] = wx[j];
                mr[x0 + j] = mx[j];
                vr[x0 + j] = vx[j];
            }
        }
        if (target > last[r])
            last[r] = target;
    }
}

static PyObject *
adam_rows(PyObject *self, PyObject *args)
{
    unsigned long long w, m, v, rows, last, grad, c_step, c_bc2;
    Py_ssize_t width, n_rows;
    long long target;
    float wd, omb1, b2, omb2, eps;
    if (!PyArg_ParseTuple(args, "KKKnKnKLKKKfffff", &w, &m, &v, &width, &rows, &n_rows, &last,
                          &target, &grad, &c_step, &c_bc2, &wd, &omb1, &b2, &omb2, &eps))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_MXCSR
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040); /* FTZ | DAZ */
#endif
    adam_rows_impl((float *)(uintptr_t)w, (float *)(uintptr_t)m, (float *)(uintptr_t)v, width,
                   (const int64_t *)(uintptr_t)rows, n_rows, (int64_t *)(uintptr_t)last,
                   (int64_t)target, (const float *)(uintptr_t)grad,
                   (const float *)(uintptr_t)c_step, (const float *)(uintptr_t)c_bc2, wd, omb1,
                   b2, omb2, eps);
#ifdef HAVE_MXCSR
    _mm_setcsr(saved);
#endif
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"adam_rows", adam_rows, METH_VARARGS, "Catch rows of Adam-optimised tables up to a step."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_adam_kernel", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__adam_kernel(void)
{
    return PyModule_Create(&module);
}

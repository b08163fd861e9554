/* kernels/cuda/dev.cu - device handle, memory, copies, events and error text. */
#include <stdlib.h>
#include <string.h>

#include "cuda_int.cuh"

int krn_cuda__fail(struct krn_cuda_dev *dev, const char *what, const char *err, const char *file,
                   int line)
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (dev)
        snprintf(dev->msg, sizeof(dev->msg), "cuda: %s: %s (%s:%d)", what, err, base, line);
    return S3_EDEVICE;
}

extern "C" int krn_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the non-sticky error */
        return 0;
    }
    return n;
}

extern "C" int krn_cuda_dev_new(int ordinal, struct krn_cuda_dev **out)
{
    *out = NULL;
    if (ordinal < 0 || ordinal >= krn_cuda_device_count())
        return S3_EDEVICE;
    struct krn_cuda_dev *dev = (struct krn_cuda_dev *)calloc(1, sizeof(*dev));
    if (!dev)
        return S3_ENOMEM;
    dev->ordinal = ordinal;
    int rc = 0;
    cudaDeviceProp prop;
    cudaError_t e = cudaSetDevice(ordinal);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&prop, ordinal);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&dev->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        rc = S3_EDEVICE;
        goto out;
    }
    snprintf(dev->name, sizeof(dev->name), "%s (sm_%d%d, %d SMs)", prop.name, prop.major,
             prop.minor, prop.multiProcessorCount);
    if (cublasCreate(&dev->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(dev->blas, dev->stream) != CUBLAS_STATUS_SUCCESS) {
        rc = S3_EDEVICE;
        goto out;
    }
    /* tensor-op GEMMs with fp32 accumulation; results are deterministic for a given shape */
    cublasSetMathMode(dev->blas, CUBLAS_DEFAULT_MATH);
    /* one workspace for cuBLAS and the tuned cuBLASLt GEMMs: both run on the compute stream */
    dev->gemm_ws_bytes = KRN_CUDA_WS_BYTES;
    if (cublasLtCreate(&dev->lt) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&dev->gemm_ws, dev->gemm_ws_bytes) != cudaSuccess ||
        cublasSetWorkspace(dev->blas, dev->gemm_ws, dev->gemm_ws_bytes) !=
            CUBLAS_STATUS_SUCCESS) {
        (void)cudaGetLastError();
        rc = S3_EDEVICE;
        goto out;
    }
    if (prop.major == 9 && krn_cuda__attn_probe(dev) < 0) {
        rc = S3_EDEVICE;
        goto out;
    }
    {
        /* S3_CUDA_ATTN=1 selects the single-stage attention kernel, 2 the mma.sync pipelined
           one (comparison, fallback), 3 the Hopper one where it runs */
        const char *v = getenv("S3_CUDA_ATTN");
        if (v && v[0] >= '1' && v[0] <= '3' && v[1] == 0)
            dev->attn_variant = v[0] - '0';
    }
out:
    if (rc < 0) {
        krn_cuda_dev_free(dev);
        return rc;
    }
    *out = dev;
    return 0;
}

extern "C" void krn_cuda_dev_free(struct krn_cuda_dev *dev)
{
    if (!dev)
        return;
    if (dev->blas)
        cublasDestroy(dev->blas);
    if (dev->stream) {
        cudaStreamSynchronize(dev->stream);
        cudaStreamDestroy(dev->stream);
    }
    krn_cuda__gemm_free(dev); /* after the stream: its workspace may be in use until then */
    if (dev->att_scr)
        cudaFree(dev->att_scr);
    free(dev);
}

extern "C" const char *krn_cuda_errmsg(const struct krn_cuda_dev *dev)
{
    return dev && dev->msg[0] ? dev->msg : "cuda: no error recorded";
}

extern "C" const char *krn_cuda_dev_name(const struct krn_cuda_dev *dev)
{
    return dev ? dev->name : "";
}

extern "C" int krn_cuda_mem_info(struct krn_cuda_dev *dev, size_t *free_bytes,
                                 size_t *total_bytes)
{
    KRN_CHECK(dev, cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}

extern "C" int krn_cuda_malloc(struct krn_cuda_dev *dev, void **d_ptr, size_t bytes)
{
    *d_ptr = NULL;
    cudaError_t e = cudaMalloc(d_ptr, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        krn_cuda__fail(dev, "cudaMalloc", cudaGetErrorString(e), __FILE__, __LINE__);
        return S3_ENOMEM;
    }
    KRN_CHECK(dev, e);
    return 0;
}

extern "C" void krn_cuda_free(void *d_ptr)
{
    if (d_ptr)
        cudaFree(d_ptr);
}

extern "C" int krn_cuda_host_alloc(struct krn_cuda_dev *dev, void **h_ptr, size_t bytes)
{
    *h_ptr = NULL;
    KRN_CHECK(dev, cudaMallocHost(h_ptr, bytes ? bytes : 1));
    return 0;
}

extern "C" void krn_cuda_host_free(void *h_ptr)
{
    if (h_ptr)
        cudaFreeHost(h_ptr);
}

extern "C" int krn_cuda_upload(struct krn_cuda_dev *dev, void *d_dst, const void *h_src,
                               size_t bytes)
{
    KRN_CHECK(dev, cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, dev->stream));
    KRN_CHECK(dev, cudaStreamSynchronize(dev->stream));
    return 0;
}

extern "C" int krn_cuda_download(struct krn_cuda_dev *dev, void *h_dst, const void *d_src,
                                 size_t bytes)
{
    KRN_CHECK(dev, cudaMemcpyAsync(h_dst, d_src, bytes, cudaMemcpyDeviceToHost, dev->stream));
    KRN_CHECK(dev, cudaStreamSynchronize(dev->stream));
    return 0;
}

extern "C" int krn_cuda_upload_async(struct krn_cuda_dev *dev, void *d_dst, const void *h_src,
                                     size_t bytes)
{
    KRN_CHECK(dev, cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, dev->stream));
    return 0;
}

extern "C" int krn_cuda_download_async(struct krn_cuda_dev *dev, void *h_dst, const void *d_src,
                                       size_t bytes)
{
    KRN_CHECK(dev, cudaMemcpyAsync(h_dst, d_src, bytes, cudaMemcpyDeviceToHost, dev->stream));
    return 0;
}

extern "C" int krn_cuda_download_rows_async(struct krn_cuda_dev *dev, void *h_dst,
                                            const void *d_src, size_t src_pitch,
                                            size_t row_bytes, int n_rows)
{
    if (n_rows <= 0)
        return 0;
    KRN_CHECK(dev, cudaMemcpy2DAsync(h_dst, row_bytes, d_src, src_pitch, row_bytes,
                                     (size_t)n_rows, cudaMemcpyDeviceToHost, dev->stream));
    return 0;
}

extern "C" int krn_cuda_memset(struct krn_cuda_dev *dev, void *d_ptr, int value, size_t bytes)
{
    KRN_CHECK(dev, cudaMemsetAsync(d_ptr, value, bytes, dev->stream));
    return 0;
}

extern "C" int krn_cuda_sync(struct krn_cuda_dev *dev)
{
    KRN_CHECK(dev, cudaStreamSynchronize(dev->stream));
    KRN_CHECK(dev, cudaGetLastError());
    return 0;
}

extern "C" int krn_cuda_event_new(struct krn_cuda_dev *dev, struct krn_cuda_event **out)
{
    *out = NULL;
    struct krn_cuda_event *ev = (struct krn_cuda_event *)calloc(1, sizeof(*ev));
    if (!ev)
        return S3_ENOMEM;
    cudaError_t e = cudaEventCreate(&ev->ev);
    if (e != cudaSuccess) {
        free(ev);
        return krn_cuda__fail(dev, "cudaEventCreate", cudaGetErrorString(e), __FILE__, __LINE__);
    }
    *out = ev;
    return 0;
}

struct krn_cuda_graph {
    cudaGraphExec_t exec;
};

extern "C" int krn_cuda_capture_begin(struct krn_cuda_dev *dev)
{
    KRN_CHECK(dev, cudaStreamBeginCapture(dev->stream, cudaStreamCaptureModeThreadLocal));
    return 0;
}

extern "C" int krn_cuda_capture_end(struct krn_cuda_dev *dev, struct krn_cuda_graph **out)
{
    *out = NULL;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(dev->stream, &g);
    if (e == cudaSuccess && !g)
        e = cudaErrorStreamCaptureInvalidated;
    struct krn_cuda_graph *kg = NULL;
    if (e == cudaSuccess) {
        kg = (struct krn_cuda_graph *)calloc(1, sizeof(*kg));
        if (!kg) {
            cudaGraphDestroy(g);
            return S3_ENOMEM;
        }
        e = cudaGraphInstantiate(&kg->exec, g, 0);
    }
    if (g)
        cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        free(kg);
        (void)cudaGetLastError(); /* capture errors are not sticky: the stream goes on */
        return krn_cuda__fail(dev, "graph capture", cudaGetErrorString(e), __FILE__, __LINE__);
    }
    *out = kg;
    return 0;
}

extern "C" int krn_cuda_graph_launch(struct krn_cuda_dev *dev, struct krn_cuda_graph *g)
{
    KRN_CHECK(dev, cudaGraphLaunch(g->exec, dev->stream));
    return 0;
}

extern "C" void krn_cuda_graph_free(struct krn_cuda_graph *g)
{
    if (!g)
        return;
    cudaGraphExecDestroy(g->exec);
    free(g);
}

extern "C" void krn_cuda_event_free(struct krn_cuda_event *ev)
{
    if (!ev)
        return;
    cudaEventDestroy(ev->ev);
    free(ev);
}

extern "C" int krn_cuda_event_record(struct krn_cuda_dev *dev, struct krn_cuda_event *ev)
{
    KRN_CHECK(dev, cudaEventRecord(ev->ev, dev->stream));
    return 0;
}

extern "C" int krn_cuda_event_wait_host(struct krn_cuda_dev *dev, struct krn_cuda_event *ev)
{
    KRN_CHECK(dev, cudaEventSynchronize(ev->ev));
    return 0;
}

extern "C" int krn_cuda_event_ms(struct krn_cuda_dev *dev, struct krn_cuda_event *a,
                                 struct krn_cuda_event *b, float *ms)
{
    KRN_CHECK(dev, cudaEventElapsedTime(ms, a->ev, b->ev));
    return 0;
}

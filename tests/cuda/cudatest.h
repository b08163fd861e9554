/* tests/cuda/cudatest.h - the skip helper shared by the CUDA suites (header only: the suites
 * are one source file each). */
#pragma once

#include <stdio.h>
#include <stdlib.h>

#include "cuda_forward.h"
#include "testutil.h"

/* The model file: $S3_CUDA_MODEL, else the default model under $S3_ROOT (a layer slice
 * written by `s3serve gguf-synth --slice N` travels where the full file cannot). */
static inline const char *cudat_model_path(char *buf, size_t n)
{
    const char *p = getenv("S3_CUDA_MODEL");
    if (p && *p)
        return p;
    snprintf(buf, n, "%s/%s", s3t_root(), S3T_MODEL_REL);
    return buf;
}

/* The model path when a GPU and the model file are present; otherwise NULL after a SKIP
 * line. */
static inline const char *cudat_gpu_model_path(char *buf, size_t n)
{
    const char *path = cudat_model_path(buf, n);
    FILE *f = fopen(path, "rb");
    if (!f || !eng__cuda_available()) {
        fprintf(stderr, "SKIP: %s\n", f ? "no CUDA device or backend" : "no model file");
        if (f)
            fclose(f);
        return NULL;
    }
    fclose(f);
    return path;
}

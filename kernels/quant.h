/* kernels/quant.h - ggml block formats: sizes and reference dequantisation.
 *
 * Types use the GGUF/ggml numbering (see engine/gguf.h enum eng_ggml_type). A row of n
 * elements of a block type occupies n / block_size * block_bytes bytes; n must be a multiple
 * of the block size. Any thread. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* 1 when dequantisation of this type is supported. */
int krn_type_supported(uint32_t type);
/* Elements per block (1 for F32/F16/BF16), 0 for unsupported types. */
int krn_type_block_size(uint32_t type);
/* Bytes per block, 0 for unsupported types. */
size_t krn_type_block_bytes(uint32_t type);
/* Bytes of n elements, or 0 when unsupported or n is not a multiple of the block size. */
size_t krn_type_row_bytes(uint32_t type, int64_t n);

/* Dequantise n elements (multiple of the block size) from src into dst.
 * Returns 0, or S3_EINVAL for an unsupported type or a bad n. */
int krn_dequant(uint32_t type, const void *src, float *dst, int64_t n);

/* IEEE half and bfloat16 conversions. */
float krn_fp16_to_f32(uint16_t h);
uint16_t krn_f32_to_fp16(float f);
float krn_bf16_to_f32(uint16_t h);
uint16_t krn_f32_to_bf16(float f);

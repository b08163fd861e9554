/* engine/sae_int.h - private to engine/: helpers shared by the SAE encoder (sae.c) and its
 * trainer (sae_train.c). */
#pragma once

#include <stdint.h>

/* Insert (v, id) into vals/ids, a list of n <= cap entries sorted by value descending. Ids
 * must arrive in ascending order, so an equal value never displaces an earlier id. Returns
 * the new length (at most cap). */
int eng__sae_sel_insert(float *vals, int32_t *ids, int n, int cap, float v, int32_t id);

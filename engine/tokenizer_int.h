/* engine/tokenizer_int.h - tokenizer internals shared by tokenizer.c and chat.c (engine only).
 */
#pragma once

#include <stddef.h>

struct eng_tokenizer;

/* The model's tokenizer.chat_template (borrowed, valid for the tokenizer's lifetime; NULL
 * when the file has none). *len receives its length. */
const char *eng__tok_chat_template(const struct eng_tokenizer *t, size_t *len);

/* server/cli.h - subcommands of the s3serve executable. Each takes argv after the
 * subcommand name (argv[0] is the subcommand) and returns a process exit status. */
#pragma once

/* Default model file, relative to the working directory (overridable with S3_MODEL). */
#define CLI_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

const char *cli_default_model(void);

int cli_tokenize(int argc, char **argv);
int cli_detokenize(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_bench_engine(int argc, char **argv);
int cli_train_sae(int argc, char **argv);
int cli_sae_info(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_gguf_synth(int argc, char **argv);
/* server/cli_index.c: documents */
int cli_ingest(int argc, char **argv);
int cli_retrieve(int argc, char **argv);
int cli_ask(int argc, char **argv);
int cli_bench_scan(int argc, char **argv);

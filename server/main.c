/* server/main.c - the s3serve executable: one binary, subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

struct cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

static const struct cmd cmds[] = {
    {"serve", cli_serve, "run the OpenAI-compatible HTTP server"},
    {"generate", cli_generate, "complete a prompt with the model"},
    {"tokenize", cli_tokenize, "print token ids of stdin text"},
    {"detokenize", cli_detokenize, "print the text of token ids read from stdin"},
    {"bench-engine", cli_bench_engine, "measure prefill and decode tokens/s"},
    {"train-sae", cli_train_sae, "train the sparse autoencoders over attention keys"},
    {"sae-info", cli_sae_info, "print the header of an SAE file"},
    {"gguf-synth", cli_gguf_synth, "write a GGUF of generated weights or a layer slice"},
    {"ingest", cli_ingest, "scan documents into an index database"},
    {"retrieve", cli_retrieve, "print the evidence spans for a question as JSON"},
    {"ask", cli_ask, "answer a question about indexed documents"},
    {"bench-scan", cli_bench_scan, "measure scan throughput, memory, index size, retrieval"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: s3serve <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-14s %s\n", cmds[i].name, cmds[i].help);
    fprintf(f, "\n's3serve <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "s3serve: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

/* llama.cpp's side of scripts/decode_vs_llama_cpp.py: the GGUF stays loaded, and each line read
   from stdin runs one round as `gptoss-lite bench` does: a 128-token random prompt, then 32
   greedy decode steps, timed, their tok/s printed on a line.

   Build against a llama.cpp checkout built with CMake (LLAMA = its folder):
       cc -O2 scripts/llama_decode.c -I$LLAMA/include -I$LLAMA/ggml/include \
          -L$LLAMA/build/bin -lllama -o llama_decode
   Run with LD_LIBRARY_PATH=$LLAMA/build/bin: llama_decode MODEL.gguf THREADS */

#define _POSIX_C_SOURCE 200809L /* clock_gettime, rand_r */

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "llama.h"

#define PROMPT 128
#define STEPS 32

/* llama.cpp's loading notes are many lines a load; its errors still show. */
static void errors_only(enum ggml_log_level level, const char *text, void *data) {
    (void)data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: llama_decode MODEL.gguf THREADS\n");
        return 2;
    }
    llama_log_set(errors_only, NULL);
    llama_backend_init();
    struct llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (model == NULL) {
        fprintf(stderr, "llama_decode: cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params params = llama_context_default_params();
    params.n_ctx = params.n_batch = 512;
    params.n_threads = params.n_threads_batch = atoi(argv[2]);
    struct llama_context *ctx = llama_init_from_model(model, params);
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    unsigned seed = 1;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_token prompt[PROMPT];
        for (int i = 0; i < PROMPT; i++) prompt[i] = rand_r(&seed) % vocab;
        llama_decode(ctx, llama_batch_get_one(prompt, PROMPT));
        double start = now();
        for (int step = 0; step < STEPS; step++) {
            const float *logits = llama_get_logits_ith(ctx, -1);
            llama_token best = 0;
            for (llama_token v = 1; v < vocab; v++)
                if (logits[v] > logits[best]) best = v;
            llama_decode(ctx, llama_batch_get_one(&best, 1));
        }
        printf("%.3f\n", STEPS / (now() - start));
        fflush(stdout);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

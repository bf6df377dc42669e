/* train_state.c - the trainer's persistent state: set-up of a run (a resumed checkpoint's
 * config and state, weights from --init-from, or fresh weights; the optimizer, isolated expert
 * training's range, the metrics file) and checkpoint saves.
 * Not here: the checkpoint format (checkpoint.c), the loop that decides when to save (train.c). */
#include "train_impl.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "gate.h"
#include "checkpoint_tokenizer.h"
#include "fs.h"
#include "perf.h"
#include "placement.h"

/* COLLECTIVE (expert-parallel MoE experts are gathered first); rank 0 writes. */
ccoe_status ccoe_train_save_checkpoint(train_ctx *t, ccoe_error *err)
{
    /* the ranks wait for rank 0's write in the agreement that follows */
    ccoe_comm_phase(t->comm, "checkpoint save (rank 0 writes)", t->st.step);
    if (t->expert_mode)
        return CCOE_OK;
    if (t->n_ep > 0)
        CCOE_TRY(ccoe_train_ep_gather(t, err));
    if (t->rank != 0)
        return CCOE_OK;
    t->st.data_pos = t->s->data.pos;
    return ccoe_checkpoint_save(t->ckpt_path, &t->s->cfg, &t->s->model, &t->opt, &t->st, err);
}

/* moe.train_router_only: every parameter is frozen but the routers: the tensors of the MoE
 * layers that belong to no expert (ccoe_moe_tensor.expert < 0) and are the router's
 * ("router.*": router.weight, router.noise_weight, ...), found through each layer's own tensor
 * list. A non-expert tensor that is not the router's (an always-on shared expert, say) stays
 * frozen with the experts. */
ccoe_status ccoe_train_router_only_setup(train_ctx *t, ccoe_error *err)
{
    const ccoe_model *m = &t->s->model;
    t->frozen = malloc((size_t)m->n_params);
    if (!t->frozen)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the frozen-tensor table");
    memset(t->frozen, 1, (size_t)m->n_params);
    int trained = 0;
    for (int i = 0; i < m->n_moe; i++)
        for (int k = 0; k < m->moe.n_tensors; k++) {
            ccoe_moe_tensor mt;
            ccoe_moe_tensor_at(&m->moe, k, &mt);
            if (mt.expert >= 0 || strncmp(mt.name, "router.", 7) != 0)
                continue;
            char name[CCOE_PARAM_NAME];
            snprintf(name, sizeof name, "blocks.%d.moe.%s", m->moe_layer[i], mt.name);
            const ccoe_param *p = ccoe_model_find_param(m, name);
            if (p) {
                t->frozen[p - m->params] = 0;
                trained++;
            }
        }
    if (trained == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "moe.train_router_only = true, but the model has no router "
                              "tensors (moe.gate = %s): nothing would train",
                              t->s->cfg.moe.gate);
    return CCOE_OK;
}

/* Zeroes the gradient of every frozen parameter (after the gradient sum, before the norm). */
void ccoe_train_zero_frozen(train_ctx *t)
{
    const ccoe_model *m = &t->s->model;
    for (int i = 0; i < m->n_params; i++)
        if (t->frozen[i])
            memset(m->grad_block + m->params[i].offset, 0, m->params[i].numel * sizeof(float));
}

/* AdamW filter of moe.train_router_only: the router tensors (replicated under expert
 * parallelism: every rank updates them). */
int ccoe_train_router_filter(const ccoe_param *p, void *ctx)
{
    const train_ctx *t = ctx;
    return !t->frozen[p - t->s->model.params];
}

/* Sets up a run: the config (a resumed checkpoint's, with the knobs a resume may change), the
 * output directory, the session, the optimizer, isolated expert training's range, the weights
 * and data position (resume, --init-from or fresh), the metrics file (rank 0) and the machine
 * rates. Sets *have_session once the session is open (the caller closes it). *resume_file holds
 * the --resume or --init-from checkpoint while it is needed; the caller closes what is left. */
ccoe_status ccoe_train_setup(train_ctx *t, ccoe_session *s, ccoe_config *cfg,
                             const ccoe_train_opts *o, ccoe_st_file **resume_file,
                             int *have_session, ccoe_error *err)
{
    FILE *note = t->rank == 0 ? stderr : NULL; /* the tokenizer unpack note, printed once */
    if (o->resume) {
        /* the checkpoint's stored config wins over the command line for everything that shapes
         * the run; only the step budget, logging and output knobs may change */
        ccoe_config stored;
        CCOE_TRY(ccoe_checkpoint_open_log(o->resume, &stored, resume_file, note, err));
        CCOE_TRY(ccoe_ckpt_tok_check(*resume_file, o->resume, cfg->data.tokenizer, err));
        stored.train.steps = cfg->train.steps;
        stored.train.log_every = cfg->train.log_every;
        stored.train.eval_every = cfg->train.eval_every;
        stored.train.ckpt_every = cfg->train.ckpt_every;
        stored.run = cfg->run;
        stored.mpi.timeout = cfg->mpi.timeout; /* a property of this job, not of the run */
        memcpy(stored.train.out_dir, cfg->train.out_dir, sizeof stored.train.out_dir);
        /* the placement is the checkpoint's unless --set mpi.KEY=... changes it (it moves
         * experts between ranks, not the math) */
        for (int i = 0; i < o->n_mpi_sets; i++)
            CCOE_TRY(ccoe_config_set(&stored, o->mpi_sets[i], err));
        CCOE_TRY(ccoe_session_validate(&stored, err));
        *cfg = stored;
    }
    /* a list map must fit this job's rank count (before anything is loaded or written) */
    if (t->P > 1 && !o->train_experts &&
        (!ccoe_gate_is_none(cfg->moe.gate) || o->ccoe_placement)) {
        int32_t owner[CCOE_PLACE_MAX];
        CCOE_TRY(ccoe_placement_map(&cfg->mpi, ccoe_placement_expert_count(cfg), t->P, NULL,
                                    owner, err));
    }
    if (cfg->moe.train_router_only) {
        const ccoe_gate_ops *g = ccoe_gate_find(cfg->moe.gate);
        if (!g || !(g->flags & CCOE_GATE_ROUTER))
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "moe.train_router_only = true, but moe.gate = %s has no "
                                  "router to train: use a gate with a router (topk, "
                                  "noisy_topk, softmax) or moe.train_router_only = false",
                                  cfg->moe.gate);
        if (cfg->ccoe.train_expert[0] || o->train_experts)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "moe.train_router_only = true trains the routers alone; it "
                                  "excludes ccoe.train_expert and --train-experts");
    }
    if (o->train_experts && (o->resume || cfg->ccoe.train_expert[0] || o->stop_at > 0 ||
                             o->time_limit > 0))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--train-experts trains every listed expert to train.steps in "
                              "one go: it excludes --resume, --stop-at, --time-limit and "
                              "ccoe.train_expert");
    snprintf(t->ckpt_path, sizeof t->ckpt_path, "%s/checkpoint.safetensors", cfg->train.out_dir);
    if (t->rank == 0) {
        if (!o->resume && !o->force && access(t->ckpt_path, F_OK) == 0)
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "%s already exists: continue it with --resume %s, start over "
                                  "with --force, or choose another train.out_dir",
                                  t->ckpt_path, t->ckpt_path);
    }
    if (t->rank == 0 || o->train_experts)
        CCOE_TRY(ccoe_fs_mkdirs(cfg->train.out_dir, err));
    /* a run killed while writing its checkpoint left a full-size temporary file: remove those
     * that are a minute old and whose writer is gone (before this run writes any) */
    if (t->rank == 0)
        ccoe_remove_stale_temps(t->ckpt_path, 60, stderr);
    if (o->init_from && !o->resume) {
        /* --init-from: the weights' tokenizer must be this run's. When data.tokenizer names
         * the checkpoint's recorded directory and that is gone or changed, the run uses the
         * copy the checkpoint carries (as eval does), so the session opens with it. The file
         * stays open (in *resume_file, closed by the caller) until the weights are loaded. */
        ccoe_config other; /* its own config is not used: no note about its tokenizer */
        CCOE_TRY(ccoe_checkpoint_open_log(o->init_from, &other, resume_file, NULL, err));
        CCOE_TRY(ccoe_ckpt_tok_check(*resume_file, o->init_from, cfg->data.tokenizer, err));
        CCOE_TRY(ccoe_ckpt_tok_resolve(*resume_file, o->init_from, cfg, note, err));
    }
    if (ccoe_train_test_hook(t, "file", -1))
        snprintf(cfg->data.manifest, sizeof cfg->data.manifest, "%s",
                 "/nonexistent/ccoe-test-hook/manifest.ini");
    CCOE_TRY(ccoe_session_open(s, cfg, 1, err));
    *have_session = 1;
    t->grad_begin = 0;
    t->grad_end = s->model.num_params;
    CCOE_TRY(ccoe_adamw_init(&t->opt, s->model.num_params, err));
    if (s->model.n_moe > 0) {
        t->json_cap = 4096 + (size_t)s->model.moe.E * 64;
        t->json = malloc(t->json_cap);
        if (!t->json)
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the MoE log buffer");
    }
    if (s->cfg.ccoe.train_expert[0]) {
        /* isolated expert training: only the expert learns, only on its domains' data */
        int e = ccoe_taskmap_find_expert(&s->taskmap, s->cfg.ccoe.train_expert);
        uint32_t mask = ccoe_train_expert_domains(&s->taskmap, e);
        if (!mask)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.train_expert = %s, but no domain routes to it: add "
                                  "DOMAIN:%s to ccoe.routes",
                                  s->cfg.ccoe.train_expert, s->cfg.ccoe.train_expert);
        CCOE_TRY(ccoe_data_restrict(&s->data, mask, err));
        t->expert = e;
        /* the frozen base runs forward only: its blocks share one set of activations */
        CCOE_TRY(ccoe_model_set_train_path(&s->model, 1 + e, err));
        t->grad_begin = s->model.expert_begin[e];
        t->grad_end = s->model.expert_end[e];
    }
    if (s->cfg.moe.train_router_only)
        CCOE_TRY(ccoe_train_router_only_setup(t, err));
    ccoe_rng_seed(&t->st.rng, s->cfg.train.seed ^ 0x7261696eULL);
    if (o->resume) {
        ccoe_status st = ccoe_checkpoint_load(*resume_file, o->resume, &s->model, &t->opt, &t->st,
                                              err);
        ccoe_st_close(*resume_file);
        *resume_file = NULL;
        CCOE_TRY(st);
        ccoe_data_seek(&s->data, t->st.data_pos);
    } else if (o->init_from) {
        int missing[CCOE_MAX_EXPERTS] = {0};
        ccoe_model_init_weights(&s->model, s->cfg.train.seed, CCOE_INIT_RANDOM);
        ccoe_status st =
            ccoe_checkpoint_load_init(*resume_file, o->init_from, &s->model, missing, err);
        ccoe_st_close(*resume_file);
        *resume_file = NULL;
        CCOE_TRY(st);
        for (int e = 0; e < s->taskmap.n_experts; e++)
            if (missing[e] && s->cfg.ccoe.init == CCOE_INIT_COPY)
                ccoe_model_expert_copy_base(&s->model, e);
        ccoe_data_seek(&s->data, 0);
    } else {
        ccoe_model_init_weights(&s->model, s->cfg.train.seed, s->cfg.ccoe.init);
        ccoe_data_seek(&s->data, 0);
    }
    if (t->rank == 0) {
        snprintf(t->metrics_path, sizeof t->metrics_path, "%s/metrics.jsonl",
                 s->cfg.train.out_dir);
        t->metrics = ccoe_fs_open_output(t->metrics_path, o->resume != NULL, "metrics file", err);
        if (!t->metrics)
            return err->status;
        if (o->resume)
            CCOE_TRY(ccoe_train_metrics_trim(t, t->st.step, err));
    }
    t->flops_per_token =
        ccoe_model_train_flops_per_token(&s->cfg.model, s->cfg.model.n_layer, s->cfg.model.seq_len);
    t->peak_gflops = ccoe_measure_fma_peak(s->max_threads, 0.15);
    /* run.threads = auto: every step's count from its measured speed (threads.h) */
    t->thr_auto = s->cfg.run.threads == 0 && s->max_threads > 1;
    if (t->thr_auto)
        ccoe_threads_auto_init(&t->thr, s->max_threads);
    t->gemm_gflops = ccoe_gemm_measure_gflops(&s->gemm, 768, 0.2);
    return CCOE_OK;
}

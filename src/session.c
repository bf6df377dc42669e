/* session.c - shared setup of a run. */
#include "session.h"

#include <string.h>

#include "moe.h"
#include "placement.h"
#include "threads.h"

ccoe_status ccoe_session_validate(ccoe_config *cfg, ccoe_error *err)
{
    CCOE_TRY(ccoe_config_validate(cfg, err));
    CCOE_TRY(ccoe_moe_config_check(cfg, err));
    CCOE_TRY(ccoe_placement_config_check(cfg, err));
    return ccoe_taskmap_config_check(cfg, err);
}

ccoe_status ccoe_config_resolve(ccoe_config *cfg, const ccoe_tokenizer *tok, ccoe_error *err)
{
    int tv = tok ? tok->ops->vocab_size(tok->self) : 0;
    if (cfg->model.vocab_size == 0 && tok)
        cfg->model.vocab_size = (tv + 63) / 64 * 64;
    if (cfg->model.vocab_size < tv)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "model.vocab_size = %d is smaller than the %s tokenizer's %d ids: "
                              "set it to 0 (automatic) or at least %d",
                              cfg->model.vocab_size, tok->ops->name, tv, tv);
    return ccoe_session_validate(cfg, err);
}

ccoe_status ccoe_session_open(ccoe_session *s, const ccoe_config *cfg, int with_data,
                              ccoe_error *err)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    ccoe_status st;
    ccoe_gemm_backend be;
    if ((st = ccoe_gemm_backend_parse(s->cfg.run.gemm, &be, err)) != CCOE_OK)
        return ccoe_error_wrap(err, "run.gemm");
    if ((st = ccoe_tokenizer_init(&s->tok, s->cfg.data.tokenizer, err)) != CCOE_OK)
        return ccoe_error_wrap(err, "data.tokenizer");
    if (!with_data && s->cfg.model.vocab_size == 0)
        s->cfg.model.vocab_size = (s->tok.ops->vocab_size(s->tok.self) + 63) / 64 * 64;
    if ((st = ccoe_config_resolve(&s->cfg, with_data ? &s->tok : NULL, err)) != CCOE_OK)
        goto fail;
    s->max_threads = s->cfg.run.threads > 0 ? s->cfg.run.threads : ccoe_threads_available();
    if ((st = ccoe_gemm_init(&s->gemm, be, s->max_threads, err)) != CCOE_OK)
        goto fail;
    {
        ccoe_precision prec;
        if ((st = ccoe_precision_parse(s->cfg.run.precision, &prec, err)) != CCOE_OK ||
            (st = ccoe_gemm_set_precision(&s->gemm, prec, err)) != CCOE_OK) {
            ccoe_error_wrap(err, "run.precision");
            goto fail;
        }
    }
    const ccoe_config *c = &s->cfg;
    if (with_data) {
        st = ccoe_data_load(&s->data, c->data.manifest, &s->tok, c->model.seq_len,
                            c->data.val_fraction, c->data.task_examples, c->train.seed, err);
        if (st != CCOE_OK)
            goto fail;
        s->have_data = 1;
    }
    {
        /* the data's domains; without data (benchmarks), the domains the routes name */
        char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
        int nd = s->have_data ? s->data.n_domains : ccoe_taskmap_route_domains(c, names);
        for (int d = 0; s->have_data && d < nd; d++)
            memcpy(names[d], s->data.domains[d].name, CCOE_NAME_LEN);
        st = ccoe_taskmap_build(&s->taskmap, c, (const char(*)[CCOE_NAME_LEN])names, nd, err);
        if (st != CCOE_OK)
            goto fail;
    }
    st = ccoe_model_init_moe(&s->model, &c->model, &s->taskmap, &c->moe, c->train.batch_size,
                             c->model.seq_len, &s->gemm, s->max_threads, err);
    if (st != CCOE_OK)
        goto fail;
    if (s->model.n_moe > 0 && s->have_data &&
        ccoe_moe_check_domains(&s->model.moe, s->data.n_domains, err) != CCOE_OK) {
        st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                            "moe.gate = domain sends domain d to expert d, but the data has %d "
                            "domains and moe.n_experts = %d: set moe.n_experts >= %d",
                            s->data.n_domains, s->model.moe.E, s->data.n_domains);
        goto fail;
    }
    s->model.seed = c->train.seed;
    st = ccoe_batch_init(&s->batch, c->train.batch_size, c->model.seq_len, err);
    if (st != CCOE_OK)
        goto fail;
    return CCOE_OK;
fail:
    ccoe_session_close(s);
    return st;
}

void ccoe_session_close(ccoe_session *s)
{
    ccoe_batch_free(&s->batch);
    ccoe_model_free(&s->model);
    if (s->have_data)
        ccoe_data_free(&s->data);
    s->have_data = 0;
    ccoe_tokenizer_free(&s->tok);
    ccoe_gemm_free(&s->gemm);
}

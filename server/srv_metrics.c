/* server/srv_metrics.c - counters kept with atomics, rendered in Prometheus text format
 * (version 0.0.4). Any thread may count; rendering reads a consistent-enough snapshot. */
#include <string.h>

#include "srv_int.h"

static const int status_codes[SRV_N_STATUS - 1] = {200, 202, 400, 401, 404, 405, 409,
                                                   413, 429, 499, 500, 503, 504, 0};
/* upper bounds in seconds; the last bucket is +Inf */
static const double bucket_le[SRV_N_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,   0.25,   0.5,   1,    2.5};

int srv_status_index(int status)
{
    for (int i = 0; i < SRV_N_STATUS - 2; i++)
        if (status_codes[i] == status)
            return i;
    return SRV_N_STATUS - 1;
}

void srv_metrics_request(struct srv_metrics *m, int route, int status, double seconds)
{
    if (route < 0 || route >= SRV_ROUTE__N)
        route = SRV_ROUTE_OTHER;
    atomic_fetch_add(&m->requests[route][srv_status_index(status)], 1);
    int b = SRV_N_BUCKETS - 1;
    for (int i = 0; i < SRV_N_BUCKETS - 1; i++)
        if (seconds <= bucket_le[i]) {
            b = i;
            break;
        }
    atomic_fetch_add(&m->lat_bucket[route][b], 1);
    atomic_fetch_add(&m->lat_count[route], 1);
    atomic_fetch_add(&m->lat_sum_us[route], (uint64_t)(seconds > 0 ? seconds * 1e6 : 0));
}

int srv_metrics_render(struct srv_metrics *m, int ready, const struct srv_doc_metrics *dm,
                       struct srv_buf *o)
{
    int rc = 0;
#define P(...)                                                                                 \
    do {                                                                                       \
        if (rc == 0)                                                                           \
            rc = srv_buf_printf(o, __VA_ARGS__);                                               \
    } while (0)

    P("# HELP s3_http_requests_total HTTP requests by route and status.\n"
      "# TYPE s3_http_requests_total counter\n");
    for (int r = 0; r < SRV_ROUTE__N; r++)
        for (int s = 0; s < SRV_N_STATUS; s++) {
            uint64_t v = atomic_load(&m->requests[r][s]);
            if (!v)
                continue;
            if (s == SRV_N_STATUS - 1)
                P("s3_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                  srv_route_label(r), (unsigned long long)v);
            else
                P("s3_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                  srv_route_label(r), status_codes[s], (unsigned long long)v);
        }
    P("# HELP s3_http_request_duration_seconds Time from request start to completion.\n"
      "# TYPE s3_http_request_duration_seconds histogram\n");
    for (int r = 0; r < SRV_ROUTE__N; r++) {
        uint64_t count = atomic_load(&m->lat_count[r]);
        if (!count)
            continue;
        uint64_t cum = 0;
        for (int b = 0; b < SRV_N_BUCKETS; b++) {
            cum += atomic_load(&m->lat_bucket[r][b]);
            if (b < SRV_N_BUCKETS - 1)
                P("s3_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                  srv_route_label(r), bucket_le[b], (unsigned long long)cum);
            else
                P("s3_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
                  srv_route_label(r), (unsigned long long)cum);
        }
        P("s3_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", srv_route_label(r),
          (double)atomic_load(&m->lat_sum_us[r]) / 1e6);
        P("s3_http_request_duration_seconds_count{route=\"%s\"} %llu\n", srv_route_label(r),
          (unsigned long long)count);
    }
    P("# HELP s3_prompt_tokens_total Prompt tokens processed.\n"
      "# TYPE s3_prompt_tokens_total counter\n"
      "s3_prompt_tokens_total %llu\n",
      (unsigned long long)atomic_load(&m->tokens_in));
    P("# HELP s3_completion_tokens_total Tokens generated.\n"
      "# TYPE s3_completion_tokens_total counter\n"
      "s3_completion_tokens_total %llu\n",
      (unsigned long long)atomic_load(&m->tokens_out));
    P("# HELP s3_generations_canceled_total Generations stopped because the client left.\n"
      "# TYPE s3_generations_canceled_total counter\n"
      "s3_generations_canceled_total %llu\n",
      (unsigned long long)atomic_load(&m->gen_canceled));
    P("# HELP s3_generations_timeout_total Requests that hit their deadline.\n"
      "# TYPE s3_generations_timeout_total counter\n"
      "s3_generations_timeout_total %llu\n",
      (unsigned long long)atomic_load(&m->gen_timeouts));
    P("# HELP s3_requests_rejected_total Requests refused because the queue was full.\n"
      "# TYPE s3_requests_rejected_total counter\n"
      "s3_requests_rejected_total %llu\n",
      (unsigned long long)atomic_load(&m->gen_rejected));
    P("# HELP s3_queue_depth Jobs waiting for the engine worker.\n"
      "# TYPE s3_queue_depth gauge\n"
      "s3_queue_depth %d\n",
      atomic_load(&m->queue_depth));
    P("# HELP s3_jobs_running Jobs on the engine worker.\n"
      "# TYPE s3_jobs_running gauge\n"
      "s3_jobs_running %d\n",
      atomic_load(&m->running));
    P("# HELP s3_model_ready 1 when the model is loaded and the worker is healthy.\n"
      "# TYPE s3_model_ready gauge\n"
      "s3_model_ready %d\n",
      ready);
    if (dm) {
        P("# HELP s3_documents Documents in the index by status (all tenants).\n"
          "# TYPE s3_documents gauge\n"
          "s3_documents{status=\"ready\"} %lld\n"
          "s3_documents{status=\"scanning\"} %lld\n"
          "s3_documents{status=\"failed\"} %lld\n",
          (long long)dm->n_ready, (long long)dm->n_scanning, (long long)dm->n_failed);
        P("# HELP s3_index_bytes Bytes of the index database in use.\n"
          "# TYPE s3_index_bytes gauge\n"
          "s3_index_bytes %lld\n",
          (long long)dm->index_bytes);
        P("# HELP s3_ingest_queue_depth Uploaded documents waiting for their scan.\n"
          "# TYPE s3_ingest_queue_depth gauge\n"
          "s3_ingest_queue_depth %d\n"
          "# HELP s3_ingest_running Documents being scanned.\n"
          "# TYPE s3_ingest_running gauge\n"
          "s3_ingest_running %d\n",
          dm->ingest_queued, dm->ingest_running);
        P("# HELP s3_scan_tokens_total Token positions scanned (documents and long prompts).\n"
          "# TYPE s3_scan_tokens_total counter\n"
          "s3_scan_tokens_total %llu\n"
          "# HELP s3_scan_seconds_total Time spent scanning.\n"
          "# TYPE s3_scan_seconds_total counter\n"
          "s3_scan_seconds_total %.3f\n",
          (unsigned long long)dm->scan_tokens, dm->scan_seconds);
        P("# HELP s3_scan_tokens_per_second Scan throughput of the last or current ingestion.\n"
          "# TYPE s3_scan_tokens_per_second gauge\n"
          "s3_scan_tokens_per_second %.1f\n",
          dm->scan_tps_last);
    }
#undef P
    return rc;
}

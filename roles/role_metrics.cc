#include "roles/role_metrics.h"

namespace goldcache::roles {
namespace {

constexpr char kManifestHelp[] =
    "Manifests found beside a generation being opened: loaded (describes it, attached), stale "
    "(describes another generation: ignored) or damaged (unreadable: ignored).";

constexpr char kReadBytesHelp[] = "Bytes returned to readers, by where they came from.";
constexpr char kLatencyHelp[] = "Latency of reads through the mount, by source.";
constexpr char kResetsHelp[] = "Overlays discarded, by reason.";
constexpr char kErrorsHelp[] = "Errors by kind.";
constexpr char kFallbackHelp[] =
    "Requests answered from what goldcache knew while the datastore timed out.";

}  // namespace

RoleMetrics::RoleMetrics(metrics::Registry& r)
    : read_cache(r.GetCounter("goldcache_read_bytes_total", kReadBytesHelp, {{"source", "cache"}})),
      read_datastore(
          r.GetCounter("goldcache_read_bytes_total", kReadBytesHelp, {{"source", "datastore"}})),
      read_overlay(
          r.GetCounter("goldcache_read_bytes_total", kReadBytesHelp, {{"source", "overlay"}})),
      latency_cache(r.GetHistogram("goldcache_read_latency_seconds", kLatencyHelp,
                                   {{"source", "cache"}}, metrics::LatencyBuckets())),
      latency_datastore(r.GetHistogram("goldcache_read_latency_seconds", kLatencyHelp,
                                       {{"source", "datastore"}}, metrics::LatencyBuckets())),
      latency_overlay(r.GetHistogram("goldcache_read_latency_seconds", kLatencyHelp,
                                     {{"source", "overlay"}}, metrics::LatencyBuckets())),
      desktop_resets(
          r.GetCounter("goldcache_desktop_resets_total", kResetsHelp, {{"reason", "last_close"}})),
      desktop_manual_resets(
          r.GetCounter("goldcache_desktop_resets_total", kResetsHelp, {{"reason", "command"}})),
      release_waits(
          r.GetCounter("goldcache_desktop_release_waits_total",
                       "Opens and stats of a desktop whose every descriptor was closed, which "
                       "waited for the kernel's release of that session so as to see a pristine "
                       "one.")),
      generation_changes(
          r.GetCounter("goldcache_template_generation_changes_total",
                       "Opens that found a template changed on the datastore (a new generation).")),
      changed_while_open(
          r.GetCounter("goldcache_template_changed_while_open_total",
                       "Templates changed on the datastore while desktops had them open.")),
      stale_reads(
          r.GetCounter("goldcache_errors_total", kErrorsHelp, {{"kind", "stale_generation"}})),
      read_errors(r.GetCounter("goldcache_errors_total", kErrorsHelp, {{"kind", "read"}})),
      readonly_refusals(r.GetCounter("goldcache_readonly_refusals_total",
                                     "Changes refused (EROFS) because of a file's role.")),
      outage_attrs(r.GetCounter("goldcache_datastore_outage_fallbacks_total", kFallbackHelp,
                                {{"what", "attributes"}})),
      outage_opens(r.GetCounter("goldcache_datastore_outage_fallbacks_total", kFallbackHelp,
                                {{"what", "open"}})),
      manifest_loaded(
          r.GetCounter("goldcache_manifests_total", kManifestHelp, {{"result", "loaded"}})),
      manifest_stale(
          r.GetCounter("goldcache_manifests_total", kManifestHelp, {{"result", "stale"}})),
      manifest_damaged(
          r.GetCounter("goldcache_manifests_total", kManifestHelp, {{"result", "damaged"}})),
      manifests_published(r.GetCounter("goldcache_manifests_published_total",
                                       "Manifests written by `goldcache publish` on this host.")) {}

void RoleMetrics::CountRead(uint64_t from_cache, uint64_t from_datastore, uint64_t from_overlay,
                            std::chrono::steady_clock::duration took) {
  read_cache.Add(from_cache);
  read_datastore.Add(from_datastore);
  read_overlay.Add(from_overlay);
  metrics::Histogram& h = from_datastore                ? latency_datastore
                          : from_cache || !from_overlay ? latency_cache
                                                        : latency_overlay;
  h.Observe(std::chrono::duration<double>(took).count());
}

uint64_t NanosSince(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

}  // namespace goldcache::roles

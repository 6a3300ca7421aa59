// The router interface: one token's raw router logits in, the selected experts out.
// Pure math: this layer knows nothing about models (see SPEC.md §2 for the rules' semantics).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace bhmoe::routing {

class Calibration;  // calibration.h
struct RouterSpec;  // spec.h

// Routers keep per-call scratch on the stack; this bounds N so that stays small and fixed.
inline constexpr int kMaxExperts = 1024;

class Router {
 public:
  virtual ~Router() = default;

  // Canonical spec, every parameter spelled out, e.g.
  // "bh:alpha=0.05,max_k=16,min_k=1,temperature=1,renorm=false,pvalues=calibrated".
  // make_router(spec(), ...) builds an identical router.
  virtual std::string spec() const = 0;

  // N, the number of experts the router was built for.
  virtual int num_experts() const = 0;

  // The largest count route() can return: the row width of the batch buffers.
  virtual int max_count() const = 0;

  // Routes one token of `layer`. `logits` holds N raw router logits. Writes the selected expert
  // ids, highest probability first (ties: lower id first), to ids[0..count) and their weights to
  // weights[0..count); returns count, in [1, max_count()]. Thread-safe, allocation-free.
  // Throws bhmoe::Error on a non-finite logit or a layer the calibration does not cover.
  virtual int route(const float* logits, int layer, int32_t* ids, float* weights) const = 0;

  // Routes T tokens: logits [T, N] row-major; ids and weights [T, max_count()] row-major, slots
  // past counts[t] set to -1 and 0; counts [T]. All buffers are the caller's; nothing is allocated.
  virtual void route_batch(const float* logits, int64_t num_tokens, int layer, int32_t* ids,
                           float* weights, int32_t* counts) const;

  // True when route() uses layer-specific data (a calibration); false when every layer is routed
  // alike (top-k, top-p).
  virtual bool uses_calibration() const { return false; }
};

// Parses and validates `spec` (see spec.h) and builds the router for N = num_experts.
// `calibration` is required by rules that use it (bh with pvalues=calibrated) and ignored
// otherwise. Throws bhmoe::Error naming the key and the reason for any invalid spec.
std::unique_ptr<Router> make_router(std::string_view spec, int num_experts,
                                    std::shared_ptr<const Calibration> calibration = nullptr);

// The same for a spec value: validated (validate_router_spec), resolved for N, built. Frontends pass
// RouterSpec values around and call this; there is no need to print and re-parse a spec.
std::unique_ptr<Router> make_router(const RouterSpec& spec, int num_experts,
                                    std::shared_ptr<const Calibration> calibration = nullptr);

}  // namespace bhmoe::routing

// Engine behaviour on the tiny-f32 golden checkpoint: prefill/decode agreement, the observer,
// routing really applied, errors, no allocation while decoding, sampling, generation and scoring.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "model/engine.h"
#include "model/make_model.h"
#include "model/safetensors.h"
#include "model/sampler.h"
#include "model/verbs.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "util/error.h"

// Counts every allocation made through operator new in this test binary, so a test can prove the
// decode loop allocates nothing. new and delete are both replaced (malloc/free), which keeps
// AddressSanitizer's allocation/deallocation pairing consistent; GCC cannot see that pairing.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;

fs::path tiny_dir() {
  return fs::path(BHMOE_SHARED_DIR) / "golden" / "tiny-f32";
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = Model::load(tiny_dir());
    calibration_ = std::make_shared<routing::Calibration>(
        routing::Calibration::load(tiny_dir() / "calibration.json"));
    std::ifstream in(tiny_dir() / "cases.json");
    const auto cases = nlohmann::json::parse(in);
    long_ids_ = cases[2]["ids"].get<std::vector<int32_t>>();
  }
  static void TearDownTestSuite() {
    model_.reset();
    calibration_.reset();
  }
  int V() const { return model_->config().vocab_size; }
  int L() const { return model_->config().num_layers; }
  int N() const { return model_->config().num_experts; }

  std::vector<float> prefill_logits(Session& session, const std::vector<int32_t>& ids) {
    std::vector<float> out(ids.size() * V());
    session.prefill(ids, out.data());
    return out;
  }

  static std::shared_ptr<const Model> model_;
  static std::shared_ptr<routing::Calibration> calibration_;
  static std::vector<int32_t> long_ids_;
};
std::shared_ptr<const Model> EngineTest::model_;
std::shared_ptr<routing::Calibration> EngineTest::calibration_;
std::vector<int32_t> EngineTest::long_ids_;

double max_diff(const float* a, const float* b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

struct Recorder : RouterObserver {
  struct Event {
    int layer;
    int64_t position;
    std::vector<float> logits;
    std::vector<int32_t> ids;
    std::vector<float> weights;
  };
  std::vector<Event> events;
  void on_route(const RouterEvent& e) override {
    events.push_back({e.layer, e.position, std::vector<float>(e.logits, e.logits + e.num_experts),
                      std::vector<int32_t>(e.ids, e.ids + e.count),
                      std::vector<float>(e.weights, e.weights + e.count)});
  }
};

TEST_F(EngineTest, PrefillEqualsTheSameTokensDecodedOneByOne) {
  for (const char* spec : {"native", "bh:alpha=0.2,max_k=8,min_k=2,renorm=true"}) {
    SCOPED_TRACE(spec);
    std::unique_ptr<routing::Router> router;
    if (std::string(spec) != "native") router = routing::make_router(spec, N(), calibration_);
    kernels::ThreadPool pool(2);
    Session batch(model_, router.get(), &pool, 64);
    const auto all = prefill_logits(batch, long_ids_);
    Session stepwise(model_, router.get(), nullptr, 64);
    for (size_t t = 0; t < long_ids_.size(); ++t) {
      stepwise.decode(long_ids_[t]);
      ASSERT_LE(max_diff(stepwise.last_logits(), all.data() + t * V(), V()), 2e-5)
          << "position " << t;
    }
    EXPECT_EQ(stepwise.position(), static_cast<int64_t>(long_ids_.size()));
    EXPECT_EQ(batch.selected_experts_per_layer(), stepwise.selected_experts_per_layer());
  }
}

TEST_F(EngineTest, PrefillInPiecesEqualsOnePrefill) {
  Session whole(model_, nullptr, nullptr, 64);
  const auto all = prefill_logits(whole, long_ids_);
  Session pieces(model_, nullptr, nullptr, 64);
  const std::vector<int32_t> head(long_ids_.begin(), long_ids_.begin() + 10);
  const std::vector<int32_t> tail(long_ids_.begin() + 10, long_ids_.end());
  pieces.prefill(head);
  const auto rest = prefill_logits(pieces, tail);
  EXPECT_LE(max_diff(rest.data(), all.data() + head.size() * V(), rest.size()), 2e-5);
  // reset() empties the cache: the same tokens give the same logits again.
  pieces.reset();
  EXPECT_EQ(pieces.position(), 0);
  const auto again = prefill_logits(pieces, long_ids_);
  EXPECT_LE(max_diff(again.data(), all.data(), all.size()), 1e-6);
}

TEST_F(EngineTest, TruncateKeepsThePrefixForAnotherContinuation) {
  Session whole(model_, nullptr, nullptr, 64);
  const auto all = prefill_logits(whole, long_ids_);
  const std::vector<int32_t> head(long_ids_.begin(), long_ids_.begin() + 10);
  const std::vector<int32_t> tail(long_ids_.begin() + 10, long_ids_.end());
  Session shared(model_, nullptr, nullptr, 64);
  shared.prefill(head);
  // A different continuation first, then back to the prefix and the real one.
  std::vector<int32_t> other(tail.size());
  for (size_t i = 0; i < other.size(); ++i) other[i] = (tail[i] + 7) % V();
  shared.prefill(other);
  shared.truncate(10);
  EXPECT_EQ(shared.position(), 10);
  const auto rest = prefill_logits(shared, tail);
  EXPECT_LE(max_diff(rest.data(), all.data() + head.size() * V(), rest.size()), 2e-5);
  EXPECT_THROW(shared.truncate(shared.position() + 1), Error);
  EXPECT_THROW(shared.truncate(-1), Error);
  shared.truncate(0);
  EXPECT_EQ(shared.position(), 0);
}

TEST_F(EngineTest, ThreadedAndSingleThreadedAgree) {
  kernels::ThreadPool pool(2);
  Session threaded(model_, nullptr, &pool, 64);
  Session single(model_, nullptr, nullptr, 64);
  const auto a = prefill_logits(threaded, long_ids_);
  const auto b = prefill_logits(single, long_ids_);
  EXPECT_LE(max_diff(a.data(), b.data(), a.size()), 1e-5);
}

TEST_F(EngineTest, ObserverSeesEveryDecisionAsTheRouterMadeIt) {
  auto router = routing::make_router("bh:alpha=0.05,max_k=4,min_k=1", N(), calibration_);
  Session session(model_, router.get(), nullptr, 64);
  Recorder recorder;
  session.set_observer(&recorder);
  session.prefill(long_ids_);
  session.decode(7);
  const int64_t T = static_cast<int64_t>(long_ids_.size()) + 1;
  ASSERT_EQ(static_cast<int64_t>(recorder.events.size()), T * L());
  std::map<std::pair<int, int64_t>, int> seen;
  for (const auto& e : recorder.events) {
    ++seen[{e.layer, e.position}];
    // Routing the reported logits again reproduces the reported decision.
    int32_t ids[routing::kMaxExperts];
    float weights[routing::kMaxExperts];
    const int count = router->route(e.logits.data(), e.layer, ids, weights);
    ASSERT_EQ(count, static_cast<int>(e.ids.size()));
    for (int j = 0; j < count; ++j) {
      EXPECT_EQ(ids[j], e.ids[j]);
      EXPECT_FLOAT_EQ(weights[j], e.weights[j]);
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), T * L());
  EXPECT_EQ(seen.begin()->first, std::make_pair(0, int64_t{0}));
  EXPECT_EQ(seen.rbegin()->first, std::make_pair(L() - 1, T - 1));
  // The observer's counts are the session's totals.
  std::vector<int64_t> per_layer(L(), 0);
  for (const auto& e : recorder.events) per_layer[e.layer] += static_cast<int64_t>(e.ids.size());
  EXPECT_EQ(per_layer, session.selected_experts_per_layer());
  EXPECT_EQ(session.routed_tokens(), T);
  session.set_observer(nullptr);
  session.decode(8);
  EXPECT_EQ(static_cast<int64_t>(recorder.events.size()), T * L());
}

TEST_F(EngineTest, ForcedKChangesCountsAndLogits) {
  std::map<int, std::vector<float>> logits_by_k;
  for (int k : {1, 2, 4, 8}) {
    auto router = routing::make_router("topk:k=" + std::to_string(k), N());
    Session session(model_, router.get(), nullptr, 64);
    Recorder recorder;
    session.set_observer(&recorder);
    logits_by_k[k] = prefill_logits(session, long_ids_);
    for (const auto& e : recorder.events) ASSERT_EQ(static_cast<int>(e.ids.size()), k);
    for (int64_t s : session.selected_experts_per_layer()) {
      EXPECT_EQ(s, k * static_cast<int64_t>(long_ids_.size()));
    }
  }
  EXPECT_GT(max_diff(logits_by_k[1].data(), logits_by_k[4].data(), logits_by_k[1].size()), 1e-3);
  EXPECT_GT(max_diff(logits_by_k[4].data(), logits_by_k[8].data(), logits_by_k[4].size()), 1e-3);
  // Native (config top-2, no renorm) is topk:k=2.
  Session native(model_, nullptr, nullptr, 64);
  EXPECT_EQ(native.router().spec().rfind("topk:k=2", 0), 0u) << native.router().spec();
  const auto native_logits = prefill_logits(native, long_ids_);
  EXPECT_LE(max_diff(native_logits.data(), logits_by_k[2].data(), native_logits.size()), 1e-6);
}

TEST_F(EngineTest, BhCountsVaryPerToken) {
  auto router = routing::make_router("bh:alpha=0.2,max_k=8,min_k=2,renorm=true", N(), calibration_);
  Session session(model_, router.get(), nullptr, 64);
  Recorder recorder;
  session.set_observer(&recorder);
  session.prefill(long_ids_);
  std::set<size_t> counts;
  for (const auto& e : recorder.events) counts.insert(e.ids.size());
  EXPECT_GE(counts.size(), 2u);
  EXPECT_GE(*counts.begin(), 2u);
  EXPECT_LE(*counts.rbegin(), 8u);
}

TEST_F(EngineTest, BadInputIsAClearError) {
  Session session(model_, nullptr, nullptr, 8);
  auto expect_error = [](auto&& fn, const std::string& fragment) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error([&] { session.prefill(std::vector<int32_t>{1, V()}); }, "outside the vocabulary");
  expect_error([&] { session.prefill(std::vector<int32_t>{-1}); }, "outside the vocabulary");
  expect_error([&] { session.decode(V() + 5); }, "outside the vocabulary");
  expect_error([&] { session.prefill(std::vector<int32_t>{}); }, "empty");
  EXPECT_EQ(session.position(), 0);  // nothing was run
  session.prefill(std::vector<int32_t>(8, 5));
  expect_error([&] { session.decode(5); }, "KV cache");
  auto wrong = routing::make_router("topk:k=2", N() + 1);
  expect_error([&] { session.set_router(wrong.get()); }, "experts");
  expect_error([&] { Session s(model_, nullptr, nullptr, 0); }, "max_tokens");
  // A cache beyond any machine's memory is refused before it is allocated.
  expect_error([&] { Session s(model_, nullptr, nullptr, int64_t{1} << 50); },
               cat("a KV cache of ", int64_t{1} << 50, " tokens needs"));
}

TEST_F(EngineTest, DecodeAllocatesNothing) {
  auto router = routing::make_router("bh:alpha=0.05,max_k=4,min_k=1", N(), calibration_);
  kernels::ThreadPool pool(2);
  Session session(model_, router.get(), &pool, 64);
  session.prefill(long_ids_);
  session.decode(3);  // warm-up: the pool and any lazily initialised state
  const int64_t before = g_allocations.load();
  for (int i = 0; i < 10; ++i) session.decode(static_cast<int32_t>(10 + i));
  EXPECT_EQ(g_allocations.load() - before, 0);
}

// A tiny make-model checkpoint (f32) with `value` planted at flat element `index` of `tensor`, in
// place in its safetensors file.
fs::path tiny_model_with(const std::string& name, const std::string& tensor, int64_t index,
                         float value) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("bhmoe-engine-nonfinite-" + name);
  fs::remove_all(dir);
  make_model(dir, {.preset = "tiny", .dtype = kernels::DType::F32, .seed = 3});
  const fs::path weights = dir / "model.safetensors";
  uint64_t offset = 0;
  {
    const SafetensorsFile file = SafetensorsFile::open(weights);
    const SafetensorsTensor* t = file.find(tensor);
    EXPECT_TRUE(t != nullptr && t->dtype == "F32") << tensor;
    offset = 8 + file.header_size() + t->begin + static_cast<uint64_t>(index) * 4;
  }
  std::fstream out(weights, std::ios::in | std::ios::out | std::ios::binary);
  out.seekp(static_cast<std::streamoff>(offset));
  out.write(reinterpret_cast<const char*>(&value), 4);
  EXPECT_TRUE(out.good());
  return dir;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// NaN in the weights must not turn into sampled or scored garbage: the logits rows are checked
// (naming the position), and routing refuses non-finite router logits (naming the layer, to which
// the engine adds the positions).
TEST(NonFiniteWeights, AreAnErrorNamingThePosition) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // lm_head row 7: the logit of token 7 is NaN at every position, nothing upstream is.
  auto head = Model::load(tiny_model_with("head", "lm_head.weight", 7 * 64 + 3, nan));
  Session session(head, nullptr, nullptr, 16);
  const std::vector<int32_t> prompt = {10, 11, 12};
  GenerateOptions options;
  options.max_new_tokens = 3;
  std::string e = error_of([&] { generate(session, prompt, options); });
  EXPECT_NE(e.find("non-finite logit (nan for token id 7) at position 2"), std::string::npos) << e;
  // Scoring takes every row: the first is position 0.
  e = error_of([&] { score_tokens(session, prompt); });
  EXPECT_NE(e.find("at position 0"), std::string::npos) << e;
  // So does a prefill that returns every row, and a decode names its own position.
  session.reset();
  std::vector<float> logits(prompt.size() * 1024);
  e = error_of([&] { session.prefill(prompt, logits.data()); });
  EXPECT_NE(e.find("at position 0"), std::string::npos) << e;
  session.reset();
  e = error_of([&] { session.decode(5); });
  EXPECT_NE(e.find("at position 0"), std::string::npos) << e;

  // An attention output weight: layer 0's hidden state is NaN, so its router logits are.
  auto attention =
      Model::load(tiny_model_with("attention", "model.layers.0.self_attn.o_proj.weight", 0, nan));
  Session routed(attention, nullptr, nullptr, 16);
  e = error_of([&] { generate(routed, prompt, options); });
  EXPECT_NE(e.find("positions 0..2 (token i of the batch is position 0 + i): token 0: layer 0: "
                   "router logit of expert 0 is nan"),
            std::string::npos)
      << e;
  routed.reset();
  e = error_of([&] { routed.decode(5); });
  EXPECT_NE(e.find("position 0: layer 0"), std::string::npos) << e;
}

// A weight file rewritten in place after load (here: one value changed, which also moves its
// modification time) is reported by name before any further result is written.
TEST(WeightFiles, AChangeAfterLoadIsAnErrorNamingTheFile) {
  const fs::path dir = tiny_model_with("changed", "lm_head.weight", 0, 1.0f);
  time_t mtime = 1;
  for (const char* weights : {"native", "q8"}) {
    SCOPED_TRACE(weights);
    auto model = Model::load(dir, {.weights = weights});
    model->require_weight_files_unchanged();  // no error
    struct timespec times[2] = {{0, UTIME_OMIT}, {mtime++, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (dir / "model.safetensors").c_str(), times, 0), 0);
    const std::string e = error_of([&] { model->require_weight_files_unchanged(); });
    EXPECT_NE(e.find((dir / "model.safetensors").string() + " changed on disk since it was loaded"),
              std::string::npos)
        << e;
  }
}

TEST(SamplerTest, GreedyIsArgmaxWithTiesToTheLowerId) {
  const float logits[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  Sampler greedy(5, 0.0f, 1.0f, 1);
  EXPECT_EQ(greedy.sample(logits), 1);
  EXPECT_EQ(argmax(logits, 5), 1);
  Sampler limited(1, 0.0f, 1.0f, 1);  // ids past the vocabulary limit are never chosen
  EXPECT_EQ(limited.sample(logits), 0);
}

TEST(SamplerTest, TemperatureSamplingFollowsTheDistributionAndTheSeed) {
  const float logits[3] = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler a(3, 1.0f, 1.0f, 42), b(3, 1.0f, 1.0f, 42), c(3, 1.0f, 1.0f, 43);
  int counts[3] = {0, 0, 0};
  bool differs = false;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int32_t x = a.sample(logits);
    ASSERT_EQ(x, b.sample(logits));
    differs |= x != c.sample(logits);
    ++counts[x];
  }
  EXPECT_TRUE(differs);
  EXPECT_NEAR(counts[0] / double(n), 0.5, 0.02);
  EXPECT_NEAR(counts[1] / double(n), 0.3, 0.02);
  EXPECT_NEAR(counts[2] / double(n), 0.2, 0.02);
}

TEST(SamplerTest, TopPKeepsTheSmallestPrefixReachingP) {
  const float logits[4] = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  Sampler nucleus(4, 1.0f, 0.75f, 7);  // 0.5 + 0.3 reach 0.75: only ids 0 and 1
  int counts[4] = {0, 0, 0, 0};
  for (int i = 0; i < 5000; ++i) ++counts[nucleus.sample(logits)];
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_NEAR(counts[0] / 5000.0, 0.5 / 0.8, 0.03);
  Sampler tiny(4, 1.0f, 0.01f, 7);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(tiny.sample(logits), 0);
  // A long tail: the prefix extends past the partially sorted head.
  std::vector<float> flat(2000, 0.0f);
  Sampler wide(2000, 1.0f, 0.9f, 3);
  std::set<int32_t> seen;
  for (int i = 0; i < 4000; ++i) seen.insert(wide.sample(flat.data()));
  EXPECT_GT(seen.size(), 1000u);
  EXPECT_LT(*seen.rbegin(), 1800);
}

TEST(SamplerTest, InvalidSettingsAreErrors) {
  EXPECT_THROW(Sampler(10, -1.0f, 1.0f, 0), Error);
  EXPECT_THROW(Sampler(10, 1.0f, 0.0f, 0), Error);
  EXPECT_THROW(Sampler(10, 1.0f, 1.5f, 0), Error);
}

TEST_F(EngineTest, GreedyGenerationFollowsTheArgmax) {
  Session session(model_, nullptr, nullptr, 64);
  GenerateOptions options;
  options.max_new_tokens = 6;
  options.stop_at_eos = false;
  std::vector<int32_t> streamed;
  const auto result = generate(session, std::vector<int32_t>{5, 6, 7}, options,
                               [&](int32_t t) { streamed.push_back(t); });
  ASSERT_EQ(result.tokens.size(), 6u);
  EXPECT_EQ(streamed, result.tokens);
  EXPECT_EQ(session.position(), 3 + 5);  // the last new token is not run through the model
  // Manual greedy loop on a fresh session gives the same tokens.
  Session manual(model_, nullptr, nullptr, 64);
  manual.prefill(std::vector<int32_t>{5, 6, 7});
  for (int i = 0; i < 6; ++i) {
    const int32_t next = argmax(manual.last_logits(), V());
    EXPECT_EQ(next, result.tokens[i]);
    manual.decode(next);
  }
  // Sampling with a seed is reproducible.
  options.temperature = 0.8f;
  options.top_p = 0.9f;
  options.seed = 11;
  Session s1(model_, nullptr, nullptr, 64), s2(model_, nullptr, nullptr, 64);
  EXPECT_EQ(generate(s1, std::vector<int32_t>{5, 6, 7}, options).tokens,
            generate(s2, std::vector<int32_t>{5, 6, 7}, options).tokens);
  Session small(model_, nullptr, nullptr, 8);
  options.max_new_tokens = 7;
  EXPECT_THROW(generate(small, std::vector<int32_t>{5, 6, 7}, options), Error);
}

TEST_F(EngineTest, GenerationStopsAtEos) {
  // A copy of the checkpoint whose eos is the token greedy decoding produces second.
  Session probe(model_, nullptr, nullptr, 64);
  GenerateOptions options;
  options.max_new_tokens = 2;
  options.stop_at_eos = false;
  const auto first = generate(probe, std::vector<int32_t>{5, 6, 7}, options).tokens;
  const fs::path dir = fs::path(::testing::TempDir()) / "engine_test_eos_model";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* name : {"model.safetensors", "tokenizer.json"}) {
    fs::copy_file(tiny_dir() / name, dir / name);
  }
  std::ifstream in(tiny_dir() / "config.json");
  auto config = nlohmann::json::parse(in);
  config["eos_token_id"] = first[1];
  std::ofstream(dir / "config.json") << config.dump();
  auto model = Model::load(dir);
  Session session(model, nullptr, nullptr, 64);
  options.max_new_tokens = 20;
  options.stop_at_eos = true;
  const auto result = generate(session, std::vector<int32_t>{5, 6, 7}, options);
  EXPECT_TRUE(result.stopped_at_eos);
  EXPECT_EQ(result.tokens, first);
  fs::remove_all(dir);
}

TEST_F(EngineTest, ScoreIsTheLogSoftmaxOfThePrefillLogits) {
  Session session(model_, nullptr, nullptr, 64);
  const auto logprobs = score_tokens(session, long_ids_);
  ASSERT_EQ(logprobs.size(), long_ids_.size() - 1);
  Session reference(model_, nullptr, nullptr, 64);
  const auto logits = prefill_logits(reference, long_ids_);
  for (size_t t = 0; t + 1 < long_ids_.size(); ++t) {
    const float* row = logits.data() + t * V();
    double sum = 0;
    for (int v = 0; v < V(); ++v) sum += std::exp(static_cast<double>(row[v]));
    const double want = row[long_ids_[t + 1]] - std::log(sum);
    EXPECT_NEAR(logprobs[t], want, 1e-5);
    EXPECT_LT(logprobs[t], 0.0);
  }
  EXPECT_THROW(score_tokens(session, std::vector<int32_t>{}), Error);
}

TEST_F(EngineTest, GenerateSinksThePromptLogitsOfItsPrefill) {
  const std::vector<int32_t> prompt{5, 6, 7, 8};
  Session session(model_, nullptr, nullptr, 64);
  GenerateOptions options;
  options.max_new_tokens = 3;
  options.stop_at_eos = false;
  std::vector<float> sink(prompt.size() * V(), -1.0f);
  const auto result = generate(session, prompt, options, nullptr, sink);
  Session reference(model_, nullptr, nullptr, 64);
  const auto want = prefill_logits(reference, prompt);
  EXPECT_EQ(sink, want);
  // Same tokens as without a sink.
  Session plain(model_, nullptr, nullptr, 64);
  EXPECT_EQ(generate(plain, prompt, options).tokens, result.tokens);
  std::vector<float> short_sink(V());
  Session again(model_, nullptr, nullptr, 64);
  EXPECT_THROW(generate(again, prompt, options, nullptr, short_sink), Error);
}

TEST_F(EngineTest, CollectRouterLogitsPoolsEveryLayerWindowByWindow) {
  Session session(model_, nullptr, nullptr, 8);
  const auto samples = collect_router_logits(session, long_ids_, 8);
  ASSERT_EQ(static_cast<int>(samples.size()), L());
  // The same logits an observer sees over the same windows from an empty cache.
  Recorder recorder;
  Session reference(model_, nullptr, nullptr, 8);
  reference.set_observer(&recorder);
  const std::span<const int32_t> all(long_ids_);
  for (size_t begin = 0; begin < all.size(); begin += 8) {
    reference.reset();
    reference.prefill(all.subspan(begin, std::min<size_t>(8, all.size() - begin)));
  }
  std::map<int, std::vector<float>> want;
  for (const auto& e : recorder.events) {
    want[e.layer].insert(want[e.layer].end(), e.logits.begin(), e.logits.end());
  }
  EXPECT_EQ(samples, want);
  EXPECT_EQ(samples.at(0).size(), long_ids_.size() * N());
  EXPECT_THROW(collect_router_logits(session, long_ids_, 9), Error);  // beyond the KV cache
  EXPECT_THROW(collect_router_logits(session, long_ids_, 0), Error);
}

TEST_F(EngineTest, ScoreWindowsCutsTheSequenceAndCountsExpertsPerWindow) {
  const auto router = routing::make_router(routing::parse_router_spec("topk:k=3"), N());
  Session session(model_, router.get(), nullptr, 5);
  const std::span<const int32_t> all(long_ids_);
  const auto windows = score_windows(session, all, 5);
  const size_t T = long_ids_.size();
  // Windows of 5 tokens; a final window of one token predicts nothing and is dropped.
  ASSERT_EQ(windows.size(), T % 5 == 1 ? T / 5 : (T + 4) / 5);
  int64_t predicted = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    const WindowScore& ws = windows[w];
    EXPECT_EQ(ws.begin, static_cast<int64_t>(5 * w));
    EXPECT_EQ(ws.predicted, ws.tokens - 1);
    EXPECT_EQ(ws.experts_selected, ws.tokens * 3 * L());  // top-3 in every layer
    double want = 0;
    Session reference(model_, router.get(), nullptr, 5);
    for (double lp : score_tokens(reference, all.subspan(static_cast<size_t>(ws.begin),
                                                          static_cast<size_t>(ws.tokens)))) {
      want -= lp;
    }
    EXPECT_DOUBLE_EQ(ws.nll_sum, want);
    predicted += ws.predicted;
  }
  const ScoreTotals totals = total_score(windows);
  EXPECT_EQ(totals.predicted, predicted);
  EXPECT_EQ(totals.windows, static_cast<int64_t>(windows.size()));
  EXPECT_THROW(score_windows(session, all, 6), Error);  // beyond the KV cache
  EXPECT_THROW(score_windows(session, all, 1), Error);
  EXPECT_THROW(score_windows(session, all.subspan(0, 1), 5), Error);
}

TEST_F(EngineTest, TraceRoutingRecordsWhatTheObserverSees) {
  const auto router = routing::make_router(routing::parse_router_spec("bh:alpha=0.3,max_k=4"), N(),
                                           calibration_);
  Session session(model_, router.get(), nullptr, 8);
  std::vector<float> logits(long_ids_.size() * V());
  const Trace trace = trace_routing(session, long_ids_, 8, true, logits);
  const int64_t T = static_cast<int64_t>(long_ids_.size());
  ASSERT_EQ(trace.num_tokens, T);
  ASSERT_EQ(trace.max_k, 4);
  EXPECT_EQ(trace.tokens, long_ids_);
  Recorder recorder;
  Session reference(model_, router.get(), nullptr, 8);
  reference.set_observer(&recorder);
  std::vector<float> want_logits;
  for (int64_t begin = 0; begin < T; begin += 8) {
    reference.reset();
    const auto piece = std::span<const int32_t>(long_ids_).subspan(
        static_cast<size_t>(begin), static_cast<size_t>(std::min<int64_t>(8, T - begin)));
    const auto rows = prefill_logits(reference, std::vector<int32_t>(piece.begin(), piece.end()));
    want_logits.insert(want_logits.end(), rows.begin(), rows.end());
  }
  EXPECT_EQ(logits, want_logits);
  ASSERT_EQ(static_cast<int64_t>(recorder.events.size()), T * L());
  int64_t window_start = 0;
  for (size_t i = 0; i < recorder.events.size(); ++i) {
    const auto& e = recorder.events[i];
    if (i > 0 && e.layer == 0 && e.position == 0) window_start += 8;  // the next window began
    const int64_t t = window_start + e.position;
    const int64_t row = t * L() + e.layer;
    ASSERT_EQ(trace.counts[static_cast<size_t>(row)], static_cast<int>(e.ids.size()));
    for (size_t j = 0; j < e.ids.size(); ++j) {
      EXPECT_EQ(trace.ids[static_cast<size_t>(row * 4) + j], e.ids[j]);
      EXPECT_EQ(trace.weights[static_cast<size_t>(row * 4) + j], e.weights[j]);
    }
    for (size_t j = e.ids.size(); j < 4; ++j) EXPECT_EQ(trace.ids[static_cast<size_t>(row * 4) + j], -1);
    EXPECT_TRUE(std::equal(e.logits.begin(), e.logits.end(),
                           trace.router_logits.begin() + row * N()));
  }
  EXPECT_EQ(session.router().spec(), router->spec());
  EXPECT_THROW(trace_routing(session, long_ids_, 9, false), Error);
  std::vector<float> short_logits(V());
  EXPECT_THROW(trace_routing(session, long_ids_, 8, false, short_logits), Error);
}

TEST_F(EngineTest, MakeModelRouterChecksCalibrationCoverage) {
  const auto bh = routing::parse_router_spec("bh:alpha=0.05,max_k=4");
  const auto topk = routing::parse_router_spec("topk:k=2");
  EXPECT_EQ(make_model_router(model_->config(), topk, nullptr)->spec(),
            "topk:k=2,renorm=false,temperature=1");
  EXPECT_EQ(make_model_router(model_->config(), bh, calibration_)->num_experts(), N());
  try {
    make_model_router(model_->config(), bh, nullptr);
    ADD_FAILURE() << "no error without a calibration";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs a calibration"), std::string::npos) << e.what();
  }
  // A calibration that lacks the model's last layer.
  auto partial = std::make_shared<routing::Calibration>();
  for (int layer = 0; layer + 1 < L(); ++layer) partial->set_layer(layer, {-1.0, 1.0}, {0.0, 1.0});
  try {
    make_model_router(model_->config(), bh, partial, "partial-calibration.json");
    ADD_FAILURE() << "no error for a calibration without layer " << L() - 1;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cat("no layer ", L() - 1)), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("partial-calibration.json"), std::string::npos)
        << e.what();
  }
  // A calibration of a deeper model: every layer is there, and one more the model does not have.
  auto deeper = std::make_shared<routing::Calibration>();
  for (int layer = 0; layer <= L(); ++layer) deeper->set_layer(layer, {-1.0, 1.0}, {0.0, 1.0});
  try {
    make_model_router(model_->config(), bh, deeper, "deeper-calibration.json");
    ADD_FAILURE() << "no error for a calibration with a layer " << L();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cat("layer ", L(), " is beyond the model's ", L())),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("deeper-calibration.json"), std::string::npos) << e.what();
  }
  // The entropy rule needs entropy quantiles for every layer: one missing is named.
  const auto entropy = routing::parse_router_spec("entropy:ks=1/2/4");
  auto with_entropy = std::make_shared<routing::Calibration>();
  for (int layer = 0; layer < L(); ++layer) {
    with_entropy->set_layer(layer, {-1.0, 1.0}, {0.0, 1.0});
    if (layer + 1 < L()) with_entropy->set_entropy_quantiles(layer, {1.0, 2.0, 3.0});
  }
  try {
    make_model_router(model_->config(), entropy, with_entropy);
    ADD_FAILURE() << "no error for missing entropy quantiles of layer " << L() - 1;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cat("no entropy quantiles for layer ", L() - 1)),
              std::string::npos)
        << e.what();
  }
  with_entropy->set_entropy_quantiles(L() - 1, {1.0, 2.0, 3.0});
  auto router = make_model_router(model_->config(), entropy, with_entropy);
  EXPECT_EQ(router->max_count(), 4);
  EXPECT_TRUE(router->uses_calibration());
}

TEST_F(EngineTest, AdaptiveRulesRunInTheEngine) {
  // The fitter, given N, stores entropy quantiles; every new rule then routes a real forward pass
  // with the counts it reports.
  Session collect(model_, nullptr, nullptr, 8);
  auto samples = collect_router_logits(collect, long_ids_, 8);
  auto fitted = std::make_shared<routing::Calibration>(
      routing::fit_calibration(samples, routing::FitMethod::kEcdf, 200, N()));
  for (int layer = 0; layer < L(); ++layer) EXPECT_TRUE(fitted->has_entropy_quantiles(layer));
  for (const char* text :
       {"skip:beta=0.3", "threshold:tau=0.05", "hc:max_k=8", "entropy:ks=1/2/4"}) {
    auto router = make_model_router(model_->config(), routing::parse_router_spec(text), fitted);
    Session session(model_, router.get(), nullptr, 8);
    const size_t t = std::min<size_t>(8, long_ids_.size());
    std::vector<float> logits(t * model_->config().vocab_size);
    const std::vector<int32_t> ids(long_ids_.begin(), long_ids_.begin() + t);
    session.prefill(ids, logits.data());
    for (float v : logits) ASSERT_TRUE(std::isfinite(v)) << text;
    const double mean = static_cast<double>(session.selected_experts_per_layer()[0]) /
                        static_cast<double>(session.routed_tokens());
    EXPECT_GE(mean, 1.0) << text;
    EXPECT_LE(mean, router->max_count()) << text;
  }
}

}  // namespace
}  // namespace bhmoe::model

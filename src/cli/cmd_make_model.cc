// bhmoe make-model: writes a random-weight OLMoE checkpoint in the Hugging Face layout.
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "cli/command.h"
#include "kernels/thread_pool.h"
#include "model/config.h"
#include "model/make_model.h"
#include "util/error.h"

namespace {

using namespace bhmoe;

cli::CommandRegistration make_model_command{
    "make-model",
    "Write a random-weight OLMoE checkpoint (config, safetensors, tokenizer) for tests and "
    "benchmarks",
    [](CLI::App& app) {
      struct Args {
        std::string dir;
        std::string preset = "tiny";
        int layers = 0;
        std::string dtype = "bf16";
        uint64_t seed = 0;
        std::string tokenizer;
        bool fused = false;
        uint64_t max_shard_bytes = 5'000'000'000;
        int threads = 2;
      };
      auto args = std::make_shared<Args>();
      app.add_option("dir", args->dir, "Output directory (must not exist, or be empty)")
          ->required();
      app.add_option("--preset", args->preset,
                     "Shape: tiny (OLMoE, D 64, 2 layers, 8 experts), tiny256 (the same with D and "
                     "F 256), olmoe-1b-7b (6.92 B params); qwen2-moe-tiny, qwen1.5-moe-a2.7b, "
                     "qwen3-moe-tiny, qwen3-30b-a3b, mixtral-tiny, mixtral-8x7b, "
                     "deepseek-v2-tiny, deepseek-v2-tiny-yarn, deepseek-v2-lite")
          ->check(CLI::IsMember(model::preset_names()));
      app.add_option("--layers", args->layers, "Override the preset's number of layers")
          ->check(CLI::PositiveNumber);
      app.add_option("--dtype", args->dtype, "Weight dtype: bf16 (default), f16 or f32")
          ->check(CLI::IsMember({"bf16", "f16", "f32"}));
      app.add_option("--seed", args->seed, "Random seed (default 0)")
          ->check(cli::unsigned_integer());
      app.add_option(
          "--tokenizer", args->tokenizer,
          "tokenizer.json to copy (default: a byte-level tokenizer, 256 bytes + <|endoftext|>)");
      app.add_flag("--fused", args->fused,
                   "Fused transformers-5 expert tensors (gate_up_proj, down_proj)");
      app.add_option("--max-shard-bytes", args->max_shard_bytes,
                     "Tensor bytes per safetensors shard (default 5000000000, as the hub)")
          ->check(CLI::PositiveNumber);
      app.add_option(
             "--threads", args->threads,
             "Generator threads (default 2; at most " + std::to_string(kernels::kMaxThreads) + ")")
          ->check(CLI::Range(1, kernels::kMaxThreads));
      return [args]() {
        model::MakeModelOptions options;
        options.preset = args->preset;
        if (args->layers > 0) options.layers = args->layers;
        options.dtype = args->dtype == "f32"   ? kernels::DType::F32
                        : args->dtype == "f16" ? kernels::DType::F16
                                               : kernels::DType::BF16;
        options.seed = args->seed;
        if (!args->tokenizer.empty()) options.tokenizer = args->tokenizer;
        options.fused = args->fused;
        options.max_shard_bytes = args->max_shard_bytes;
        options.threads = args->threads;
        auto start = std::chrono::steady_clock::now();
        model::MakeModelResult result = model::make_model(args->dir, options);
        double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf(
            "wrote %s: preset %s, %d layers, %s, %lld parameters, %zu weight file(s), %.3f GB in "
            "%.1f s (%.0f MB/s)\n",
            args->dir.c_str(), args->preset.c_str(), result.config.num_layers, args->dtype.c_str(),
            static_cast<long long>(result.parameters), result.weight_files.size(),
            result.weight_bytes / 1e9, seconds,
            seconds > 0 ? result.weight_bytes / 1e6 / seconds : 0.0);
        return 0;
      };
    }};

}  // namespace

// bhmoe convert: a Hugging Face OLMoE checkpoint folder to one GGUF file that llama.cpp and bhmoe
// both run.
//
//   bhmoe convert --model DIR --out F.gguf [--type bf16|f16|f32|q8_0|q4_0|q4_k|q6_k]
//
// Matrices are converted to --type (default: bf16); norms and the routers stay F32, as llama.cpp's
// converter keeps them. For llama.cpp's mixed Q4_K_M, convert to bf16 or f16 and run llama.cpp's
// llama-quantize on the result.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/command.h"
#include "kernels/matrix.h"
#include "model/checkpoint.h"
#include "model/gguf_export.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace {

using namespace bhmoe;
namespace fs = std::filesystem;

struct ConvertOptions {
  std::string model_dir;
  std::string out;
  std::string type = "bf16";
  bool force = false;
};

bhmoe::cli::CommandRegistration convert_command{
    "convert", "Write a checkpoint folder as a GGUF file (llama.cpp's format)", [](CLI::App& app) {
      auto options = std::make_shared<ConvertOptions>();
      app.add_option("--model", options->model_dir, "Hugging Face checkpoint folder")->required();
      app.add_option("--out", options->out, "The GGUF file to write")->required();
      app.add_option("--type", options->type,
                     "Matrix type: bf16 (default), f16, f32, q8_0, q4_0, q4_k or q6_k");
      app.add_flag("--force", options->force, "Replace --out if it exists");
      return [options] {
        const kernels::DType type = model::parse_gguf_matrix_type(options->type);
        const fs::path out = options->out;
        if (fs::exists(out) && !options->force)
          fail("--out ", out.string(), " exists (--force replaces it)");
        const fs::path dir = options->model_dir;
        if (fs::is_regular_file(dir))
          fail("--model ", dir.string(), " is a file; convert reads a checkpoint folder");
        auto checkpoint = model::Checkpoint::open(dir);
        const auto tokenizer = read_json_file(dir / "tokenizer.json");
        const auto start = std::chrono::steady_clock::now();
        model::export_gguf(*checkpoint, tokenizer, type, out);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("wrote %s: %s matrices, %.3f GB in %.1f s\n", out.string().c_str(),
                    kernels::dtype_name(type), static_cast<double>(fs::file_size(out)) / 1e9,
                    seconds);
        return 0;
      };
    }};

}  // namespace

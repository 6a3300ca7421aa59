#include "experiments/plots.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

#include "routing/spec.h"
#include "util/error.h"
#include "util/file.h"
#include "util/shell.h"

namespace bhmoe::experiments {
namespace {

// A gnuplot double-quoted string literal.
std::string gp_string(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

// A data-file field: tab-separated files, so only tabs and newlines need replacing.
std::string field(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  }
  return out.empty() ? "-" : out;
}

std::string number(double v) {
  return std::isfinite(v) ? routing::format_number(v) : "NaN";
}

const char* rule_color(const std::string& rule) {
  if (rule == "topk") return "#4C72B0";
  if (rule == "bh") return "#DD8452";
  if (rule == "topp") return "#55A868";
  if (rule == "skip") return "#C44E52";
  if (rule == "threshold") return "#8172B3";
  if (rule == "hc") return "#937860";
  if (rule == "entropy") return "#DA8BC3";
  return "#8C8C8C";
}

int rule_color_int(const std::string& rule) {
  return static_cast<int>(std::strtol(rule_color(rule) + 1, nullptr, 16));
}

std::string rule_label(const std::string& rule) {
  if (rule == "topk") return "top-k";
  if (rule == "bh") return "BH";
  if (rule == "topp") return "top-p";
  if (rule == "skip") return "dynamic skipping";
  if (rule == "threshold") return "threshold";
  if (rule == "hc") return "Higher Criticism";
  if (rule == "entropy") return "entropy-bucketed k";
  return rule;
}

// Legend entries for the rules present (the bars are coloured per rule through `lc rgb variable`).
std::string rule_legend(const std::vector<std::string>& rules) {
  std::string out;
  for (const std::string& rule : rules) {
    out += ", NaN with boxes fs solid 0.8 lc rgb " + gp_string(rule_color(rule)) + " title " +
           gp_string(rule_label(rule));
  }
  return out;
}

std::string xtics_list(const std::vector<std::string>& labels) {
  std::string out = "set xtics (";
  for (size_t i = 0; i < labels.size(); ++i) {
    out += (i ? ", " : "") + gp_string(labels[i]) + " " + std::to_string(i);
  }
  return out + ")\n";
}

double max_finite(const std::vector<double>& values) {
  double m = 0;
  for (double v : values) {
    if (std::isfinite(v)) m = std::max(m, v);
  }
  return m > 0 ? m : 1;
}

// Axes of a chart with one slot per category at x = 0, 1, ..., categories - 1 and bars from 0 to
// y_top: horizontal grid lines, the legend above the plot.
std::string category_axes(size_t categories, double y_top) {
  std::ostringstream s;
  s << "set grid ytics\nset key outside top center horizontal\n"
    << "set xrange [-0.6:" << (static_cast<double>(categories) - 0.4) << "]\n"
    << "set yrange [0:" << number(y_top) << "]\n";
  return s.str();
}

std::vector<std::string> rules_of(const std::vector<ConfigSummary>& configs) {
  std::vector<std::string> rules;
  for (const ConfigSummary& s : configs) {
    if (!s.rule.empty() && std::find(rules.begin(), rules.end(), s.rule) == rules.end()) {
      rules.push_back(s.rule);
    }
  }
  return rules;
}

// Configs with measurements (a config whose every row failed has no rule).
std::vector<const ConfigSummary*> measured(const Analysis& a) {
  std::vector<const ConfigSummary*> out;
  for (const ConfigSummary& s : a.configs) {
    if (std::isfinite(s.mean_experts)) out.push_back(&s);
  }
  return out;
}

// One bar per config, coloured by rule: data columns idx, name, value, error, colour.
PlotScript config_bars(const Analysis& a, std::string name, std::string title, std::string ylabel,
                       std::string caption, double ConfigSummary::*value,
                       double ConfigSummary::*error) {
  PlotScript p;
  p.file = {std::move(name), std::move(title), std::move(caption)};
  std::vector<const ConfigSummary*> configs = measured(a);
  std::ostringstream data;
  std::vector<std::string> labels;
  std::vector<double> tops;
  for (size_t i = 0; i < configs.size(); ++i) {
    const ConfigSummary& s = *configs[i];
    double e = error ? s.*error : 0.0;
    data << i << "\t" << field(s.config_name) << "\t" << number(s.*value) << "\t" << number(e)
         << "\t" << rule_color_int(s.rule) << "\n";
    labels.push_back(s.config_name);
    tops.push_back(s.*value + (std::isfinite(e) ? e : 0.0));
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel " << gp_string(ylabel) << "\n"
    << "set style fill solid 0.8 border -1\nset boxwidth 0.7\n"
    << "set xtics rotate by -45 nomirror\n"
    << category_axes(configs.size(), max_finite(tops) * 1.12) << "plot "
    << gp_string(p.file.name + ".dat")
    << " using 1:3:(0.7):5:xtic(2) with boxes lc rgb variable notitle";
  if (error) s << ", \"\" using 1:3:4 with yerrorbars lc rgb \"black\" ps 0 notitle";
  std::vector<ConfigSummary> present;
  for (const ConfigSummary* c : configs) present.push_back(*c);
  s << rule_legend(rules_of(present)) << "\n";
  p.script = s.str();
  return p;
}

PlotScript max_k_bar(const Analysis& a) {
  PlotScript p;
  p.file = {
      "max_k_comparison_bar", "Mean experts per token by max_k: BH vs top-k",
      "Grouped bars: measured mean experts per token of top-k (k = max_k) and of BH (mean over "
      "its alphas) at each max_k; labels give BH's reduction relative to top-k."};
  std::ostringstream data;
  std::vector<double> tops;
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    const MaxKRow& m = a.max_k[i];
    std::string label =
        std::isfinite(m.reduction_pct)
            ? (m.reduction_pct >= 0 ? "−" : "+") +
                  routing::format_number(std::round(std::fabs(m.reduction_pct) * 10) / 10) + "%"
            : "";
    data << i << "\t" << m.max_k << "\t" << number(m.baseline_experts) << "\t"
         << number(m.bh_mean_experts) << "\t" << field(label) << "\n";
    tops.push_back(m.baseline_experts);
    tops.push_back(m.bh_mean_experts);
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"max_k\"\nset ylabel \"mean experts per token (measured)\"\n"
    << "set style fill solid 0.85 border -1\nset boxwidth 0.38\n"
    << category_axes(a.max_k.size(), max_finite(tops) * 1.15) << "plot "
    << gp_string(p.file.name + ".dat")
    << " using ($1-0.2):3:xtic(2) with boxes lc rgb \"#4C72B0\" title \"top-k (k = max_k)\", \\\n"
    << "  \"\" using ($1+0.2):4 with boxes lc rgb \"#DD8452\" title \"BH (mean over alphas)\", \\\n"
    << "  \"\" using ($1+0.2):4:5 with labels offset 0,0.9 notitle\n";
  p.script = s.str();
  return p;
}

PlotScript max_k_box(const Analysis& a) {
  PlotScript p;
  p.file = {
      "max_k_distribution_box", "BH experts per token by max_k",
      "Box plot of BH's expert count per routing decision (every layer × token, pooled over "
      "alphas and prompts): box = quartiles, whiskers = min/max, dot = mean; dashed line = the "
      "max_k ceiling."};
  std::ostringstream data;
  std::vector<double> tops;
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    const MaxKRow& m = a.max_k[i];
    const BoxStats& b = m.bh_box;
    data << i << "\t" << m.max_k << "\t" << number(b.min) << "\t" << number(b.q1) << "\t"
         << number(b.median) << "\t" << number(b.q3) << "\t" << number(b.max) << "\t"
         << number(b.mean) << "\n";
    tops.push_back(m.max_k);
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"max_k\"\nset ylabel \"experts per routing decision\"\n"
    << "set style fill solid 0.5 border -1\nset boxwidth 0.5\n"
    << category_axes(a.max_k.size(), max_finite(tops) * 1.1) << "plot "
    << gp_string(p.file.name + ".dat")
    << " using 1:4:3:7:6:xtic(2) with candlesticks whiskerbars 0.5 lc rgb \"#DD8452\" title "
       "\"BH\", \\\n"
    << "  \"\" using 1:5:5:5:5 with candlesticks lw 2 lc rgb \"black\" notitle, \\\n"
    << "  \"\" using 1:8 with points pt 7 ps 0.8 lc rgb \"black\" title \"mean\", \\\n"
    << "  \"\" using ($1-0.35):2:(0.7):(0) with vectors nohead dt 2 lw 1.5 lc rgb \"red\" title "
       "\"max_k\"\n";
  p.script = s.str();
  return p;
}

PlotScript max_k_heatmap(const Analysis& a) {
  PlotScript p;
  p.file = {"max_k_alpha_heatmap", "BH mean experts per token: alpha × max_k",
            "Measured mean experts per token of each BH config; rows alpha, columns max_k."};
  std::vector<int> ks;
  std::vector<double> alphas;
  for (const MaxKAlphaCell& c : a.max_k_alpha) {
    if (std::find(ks.begin(), ks.end(), c.max_k) == ks.end()) ks.push_back(c.max_k);
    if (std::find(alphas.begin(), alphas.end(), c.alpha) == alphas.end()) alphas.push_back(c.alpha);
  }
  std::sort(ks.begin(), ks.end());
  std::sort(alphas.begin(), alphas.end());
  std::ostringstream data;
  double lo = INFINITY, hi = -INFINITY;
  for (const MaxKAlphaCell& c : a.max_k_alpha) {
    if (!std::isfinite(c.mean_experts)) continue;
    size_t x = std::find(ks.begin(), ks.end(), c.max_k) - ks.begin();
    size_t y = std::find(alphas.begin(), alphas.end(), c.alpha) - alphas.begin();
    data << x << "\t" << y << "\t" << number(c.mean_experts) << "\n";
    lo = std::min(lo, c.mean_experts);
    hi = std::max(hi, c.mean_experts);
  }
  if (!(hi > lo)) hi = lo + 1;
  p.data = data.str();
  std::ostringstream s;
  std::vector<std::string> klabels, alabels;
  for (int k : ks) klabels.push_back(std::to_string(k));
  for (double al : alphas) alabels.push_back(routing::format_number(al));
  std::string ytics = xtics_list(alabels);
  ytics.replace(0, 9, "set ytics");
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"max_k\"\nset ylabel \"alpha\"\nset cblabel \"mean experts per token\"\n"
    << xtics_list(klabels) << ytics << "set xrange [-0.5:" << (static_cast<double>(ks.size()) - 0.5)
    << "]\n"
    << "set yrange [-0.5:" << (static_cast<double>(alphas.size()) - 0.5) << "]\n"
    << "set cbrange [" << number(lo) << ":" << number(hi) << "]\n"
    << "set palette defined (0 \"#FFF5EB\", 1 \"#FDAE6B\", 2 \"#E6550D\", 3 \"#7F2704\")\n"
    << "unset key\nset tics out\n"
    << "plot " << gp_string(p.file.name + ".dat")
    << " using 1:2:(0.5):(0.5):3 with boxxyerror fs solid 1.0 noborder fc palette, \\\n"
    << "  \"\" using 1:2:(sprintf(\"%.2f\", $3)) with labels font \",11\"\n";
  p.script = s.str();
  return p;
}

PlotScript max_k_saturation(const Analysis& a) {
  PlotScript p;
  p.file = {
      "max_k_saturation", "Saturation: mean experts per token against max_k",
      "Measured mean experts per token against max_k, one line per BH alpha, and top-k (which "
      "uses exactly k)."};
  std::map<double, std::vector<std::pair<int, double>>> by_alpha;
  for (const MaxKAlphaCell& c : a.max_k_alpha)
    by_alpha[c.alpha].emplace_back(c.max_k, c.mean_experts);
  std::vector<std::pair<int, double>> topk;
  for (const MaxKRow& m : a.max_k) {
    if (std::isfinite(m.baseline_experts)) topk.emplace_back(m.max_k, m.baseline_experts);
  }
  std::ostringstream data, plot;
  int block = 0;
  auto emit = [&](std::vector<std::pair<int, double>> points, const std::string& title,
                  const std::string& style) {
    std::sort(points.begin(), points.end());
    for (auto& [k, v] : points) data << k << "\t" << number(v) << "\n";
    data << "\n\n";
    plot << (block ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << block
         << " using 1:2 with linespoints " << style << " title " << gp_string(title);
    ++block;
  };
  for (auto& [alpha, points] : by_alpha)
    emit(points, "BH alpha = " + routing::format_number(alpha), "lw 2 pt 7");
  if (!topk.empty()) emit(topk, "top-k", "dt 2 lw 2 pt 5 lc rgb \"#4C72B0\"");
  p.data = data.str();
  std::vector<std::string> klabels;
  std::string xt = "set xtics (";
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    xt += (i ? ", " : "") + gp_string(std::to_string(a.max_k[i].max_k)) + " " +
          std::to_string(a.max_k[i].max_k);
  }
  double min_k = a.max_k.front().max_k, max_k = a.max_k.back().max_k;
  double top = 1;
  for (const MaxKRow& m : a.max_k) {
    if (std::isfinite(m.bh_mean_experts)) top = std::max(top, m.bh_mean_experts);
    if (std::isfinite(m.baseline_experts)) top = std::max(top, m.baseline_experts);
  }
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"max_k\"\nset ylabel \"mean experts per token (measured)\"\n"
    << "set logscale x 2\n"
    << xt << ")\n"
    << "set xrange [" << number(min_k / 1.25) << ":" << number(max_k * 1.25) << "]\n"
    << "set grid\nset key outside top center horizontal\n"
    << "set yrange [0:" << number(top * 1.1) << "]\n"
    << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

PlotScript inference_time(const Analysis& a) {
  PlotScript p;
  p.file = {"inference_time_comparison", "Inference time per config (mean over prompts)",
            "Mean seconds per experiment of each config's own prefill + greedy decode (the quality "
            "passes are not included); the lower part of each bar is prefill."};
  std::vector<const ConfigSummary*> configs = measured(a);
  std::ostringstream data;
  std::vector<double> tops;
  for (size_t i = 0; i < configs.size(); ++i) {
    const ConfigSummary& c = *configs[i];
    data << i << "\t" << field(c.config_name) << "\t" << number(c.mean_inference_time) << "\t"
         << number(c.mean_prefill_time) << "\n";
    tops.push_back(c.mean_inference_time);
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel \"seconds per experiment\"\n"
    << "set style fill solid 0.8 border -1\nset boxwidth 0.7\n"
    << "set xtics rotate by -45 nomirror\n"
    << category_axes(configs.size(), max_finite(tops) * 1.12) << "plot "
    << gp_string(p.file.name + ".dat")
    << " using 1:3:xtic(2) with boxes lc rgb \"#4C72B0\" title \"decode\", \\\n"
    << "  \"\" using 1:4 with boxes lc rgb \"#DD8452\" title \"prefill\"\n";
  p.script = s.str();
  return p;
}

PlotScript experts_by_category(const Analysis& a) {
  PlotScript p;
  p.file = {"experts_by_category", "Experts per token by prompt category and config",
            "Box plot of the expert count per routing decision for each config, one box per prompt "
            "category (quartiles, whiskers min/max)."};
  std::vector<const ConfigSummary*> configs = measured(a);
  std::vector<std::string> labels;
  for (const ConfigSummary* c : configs) labels.push_back(c->config_name);
  size_t ncat = a.categories.size();
  double width = 0.8 / static_cast<double>(std::max<size_t>(ncat, 1));
  std::ostringstream data, plot;
  const char* palette[] = {"#4C72B0", "#DD8452", "#55A868", "#C44E52",
                           "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"};
  double top = 1;
  for (size_t ci = 0; ci < ncat; ++ci) {
    for (size_t x = 0; x < configs.size(); ++x) {
      for (const CategorySummary& c : a.by_category) {
        if (c.category != a.categories[ci] || c.config_name != configs[x]->config_name) continue;
        double pos = static_cast<double>(x) + (static_cast<double>(ci) - (ncat - 1) / 2.0) * width;
        data << number(pos) << "\t" << number(c.box.q1) << "\t" << number(c.box.min) << "\t"
             << number(c.box.max) << "\t" << number(c.box.q3) << "\t" << number(c.box.median)
             << "\n";
        if (std::isfinite(c.box.max)) top = std::max(top, c.box.max);
      }
    }
    data << "\n\n";
    plot << (ci ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << ci
         << " using 1:2:3:4:5 with candlesticks whiskerbars lc rgb " << gp_string(palette[ci % 8])
         << " title " << gp_string(a.categories[ci]) << ", \"\" index " << ci
         << " using 1:6:6:6:6 with candlesticks lc rgb \"black\" notitle";
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel \"experts per routing decision\"\n"
    << "set style fill solid 0.6 border -1\nset boxwidth " << number(width * 0.85) << "\n"
    << xtics_list(labels) << "set xtics rotate by -45 nomirror\n"
    << category_axes(configs.size(), top * 1.1) << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

PlotScript experts_vs_latency(const Analysis& a, const std::vector<ResultRow>& rows) {
  PlotScript p;
  p.file = {"experts_vs_latency", "Mean experts per token against inference time",
            "One point per experiment: its measured mean experts per token and its inference time "
            "(prefill + decode), coloured by rule."};
  std::vector<std::string> rules;
  for (const ResultRow& r : rows) {
    if (r.ok() && r.kind == "generate" &&
        std::find(rules.begin(), rules.end(), r.rule) == rules.end()) {
      rules.push_back(r.rule);
    }
  }
  std::ostringstream data, plot;
  for (size_t i = 0; i < rules.size(); ++i) {
    for (const ResultRow& r : rows) {
      if (!r.ok() || r.kind != "generate" || r.rule != rules[i]) continue;
      data << number(r.avg_experts_per_token) << "\t" << number(r.inference_time_sec) << "\n";
    }
    data << "\n\n";
    plot << (i ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << i
         << " using 1:2 with points pt 7 ps 0.9 lc rgb " << gp_string(rule_color(rules[i]))
         << " title " << gp_string(rule_label(rules[i]));
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"mean experts per token\"\nset ylabel \"inference time (s)\"\n"
    << "set grid\nset key outside top center horizontal\nset xrange [0:*]\nset yrange [0:*]\n"
    << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

PlotScript layer_heatmap(const Analysis& a) {
  PlotScript p;
  p.file = {"layer_heatmap", "Mean experts per token by layer and config",
            "Measured mean experts per token in each layer (rows) under each config (columns)."};
  std::vector<const ConfigSummary*> configs = measured(a);
  std::vector<std::string> labels;
  std::ostringstream data;
  double lo = INFINITY, hi = -INFINITY;
  size_t layers = 0;
  for (size_t x = 0; x < configs.size(); ++x) {
    labels.push_back(configs[x]->config_name);
    const auto& per_layer = configs[x]->per_layer_mean_experts;
    layers = std::max(layers, per_layer.size());
    for (size_t l = 0; l < per_layer.size(); ++l) {
      if (!std::isfinite(per_layer[l])) continue;
      data << x << "\t" << l << "\t" << number(per_layer[l]) << "\n";
      lo = std::min(lo, per_layer[l]);
      hi = std::max(hi, per_layer[l]);
    }
  }
  if (!(hi > lo)) hi = lo + 1;
  p.data = data.str();
  bool annotate = configs.size() * layers <= 400;
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel \"layer\"\nset cblabel \"mean experts per token\"\n"
    << xtics_list(labels) << "set xtics rotate by -45 nomirror\nset tics out\n"
    << "set ytics 1\n"
    << "set xrange [-0.5:" << (static_cast<double>(configs.size()) - 0.5) << "]\n"
    << "set yrange [-0.5:" << (static_cast<double>(layers) - 0.5) << "]\n"
    << "set cbrange [" << number(lo) << ":" << number(hi) << "]\n"
    << "set palette defined (0 \"#F7FBFF\", 1 \"#9ECAE1\", 2 \"#3182BD\", 3 \"#08306B\")\n"
    << "unset key\n"
    << "plot " << gp_string(p.file.name + ".dat")
    << " using 1:2:(0.5):(0.5):3 with boxxyerror fs solid 1.0 noborder fc palette";
  if (annotate) s << ", \\\n  \"\" using 1:2:(sprintf(\"%.1f\", $3)) with labels font \",7\"";
  s << "\n";
  p.script = s.str();
  return p;
}

PlotScript pareto(const Analysis& a) {
  PlotScript p;
  p.file = {"pareto_perplexity", "Perplexity against mean experts per token, per rule",
            "Held-out text: token-weighted perplexity of each config against its measured mean "
            "experts per token; one line per rule (lower-left is better). Bars: 95% bootstrap "
            "intervals over scoring windows (when the rows carry them)."};
  // Points: the bootstrap's pooled scope when present, else the plain pareto points.
  struct Point {
    std::string rule, name;
    double x, y, x_lo, x_hi, y_lo, y_hi;
  };
  std::vector<Point> all;
  if (!a.matched.empty()) {
    for (const MatchedPoint& m : a.matched) {
      if (m.scope != "all" || !std::isfinite(m.mean_experts.estimate)) continue;
      all.push_back({m.rule, m.config_name, m.mean_experts.estimate, std::exp(m.nll.estimate),
                     m.mean_experts.lo, m.mean_experts.hi, std::exp(m.nll.lo), std::exp(m.nll.hi)});
    }
  } else {
    for (const ParetoPoint& pt : a.pareto) {
      if (!std::isfinite(pt.mean_experts)) continue;
      all.push_back({pt.rule, pt.config_name, pt.mean_experts, pt.perplexity, pt.mean_experts,
                     pt.mean_experts, pt.perplexity, pt.perplexity});
    }
  }
  std::vector<std::string> rules;
  for (const Point& pt : all) {
    if (std::find(rules.begin(), rules.end(), pt.rule) == rules.end()) rules.push_back(pt.rule);
  }
  std::ostringstream data, plot;
  for (size_t i = 0; i < rules.size(); ++i) {
    std::vector<const Point*> points;
    for (const Point& pt : all) {
      if (pt.rule == rules[i]) points.push_back(&pt);
    }
    std::sort(points.begin(), points.end(),
              [](const Point* x, const Point* y) { return x->x < y->x; });
    for (const Point* pt : points) {
      data << number(pt->x) << "\t" << number(pt->y) << "\t" << number(pt->x_lo) << "\t"
           << number(pt->x_hi) << "\t" << number(pt->y_lo) << "\t" << number(pt->y_hi) << "\t"
           << field(pt->name) << "\n";
    }
    data << "\n\n";
    const std::string color = gp_string(rule_color(rules[i]));
    plot << (i ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << i
         << " using 1:2 with lines lw 2 lc rgb " << color << " title " << gp_string(rule_label(rules[i]))
         << ", \\\n  " << gp_string(p.file.name + ".dat") << " index " << i
         << " using 1:2:3:4:5:6 with xyerrorbars pt 7 ps 0.8 lc rgb " << color << " notitle";
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"mean experts per token (measured)\"\nset ylabel \"perplexity (held-out text, "
       "token-weighted)\"\n"
    << "set offsets 0, 0, graph 0.05, graph 0.05\nset grid\nset key outside top center "
       "horizontal\nset xrange [0:*]\n"
    << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

// The matched-compute differences of every adaptive config (all texts pooled) with their intervals:
// right of the zero line is better than top-k at equal compute.
PlotScript matched_delta(const Analysis& a) {
  PlotScript p;
  p.file = {"matched_compute_delta", "Quality gain over top-k at matched compute (95% bootstrap)",
            "Δ NLL = top-k's NLL at the config's mean experts − the config's NLL (nats per token), "
            "with its 95% bootstrap interval; right of 0 is better than top-k at equal compute."};
  std::vector<const MatchedPoint*> points;
  for (const MatchedPoint& m : a.matched) {
    if (m.scope == "all" && std::isfinite(m.delta_nll.estimate)) points.push_back(&m);
  }
  std::ostringstream data, ytics;
  std::vector<std::string> rules;
  for (const MatchedPoint* m : points) {
    if (std::find(rules.begin(), rules.end(), m->rule) == rules.end()) rules.push_back(m->rule);
  }
  std::ostringstream plot;
  int row = 0;
  for (size_t i = 0; i < rules.size(); ++i) {
    for (const MatchedPoint* m : points) {
      if (m->rule != rules[i]) continue;
      data << number(m->delta_nll.estimate) << "\t" << row << "\t" << number(m->delta_nll.lo)
           << "\t" << number(m->delta_nll.hi) << "\n";
      ytics << (row ? ", " : "") << gp_string(m->config_name) << " " << row;
      ++row;
    }
    data << "\n\n";
    plot << (i ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << i
         << " using 1:2:3:4 with xerrorbars pt 7 ps 1 lw 2 lc rgb " << gp_string(rule_color(rules[i]))
         << " title " << gp_string(rule_label(rules[i]));
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"Δ NLL vs top-k at matched compute (nats per token; > 0: better than top-k)\"\n"
    << "set ytics (" << ytics.str() << ") font \",10\"\n"
    << "set yrange [-1:" << row << "]\nset grid x\nset key outside top center horizontal\n"
    << "set arrow from 0, graph 0 to 0, graph 1 nohead lc rgb \"#444444\" dt 2\n"
    << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

std::vector<PlotScript> scripts_for(const Analysis& a, const std::vector<ResultRow>* rows) {
  std::vector<PlotScript> out;
  if (!a.max_k.empty()) {
    out.push_back(max_k_bar(a));
    out.push_back(max_k_box(a));
    if (!a.max_k_alpha.empty()) out.push_back(max_k_heatmap(a));
    out.push_back(max_k_saturation(a));
  }
  if (!measured(a).empty()) {
    out.push_back(config_bars(a, "avg_experts_comparison", "Mean experts per token by config",
                              "mean experts per token (measured)",
                              "Measured mean experts per token of each config over its prompts; "
                              "error bars = sd across prompts.",
                              &ConfigSummary::mean_experts,
                              &ConfigSummary::sd_experts_across_prompts));
    out.push_back(inference_time(a));
    out.push_back(config_bars(a, "expert_utilization_cv", "Expert utilisation CV by config",
                              "CV of per-expert selection counts",
                              "Coefficient of variation of how often each expert was selected "
                              "(mean over prompts; lower = more even load).",
                              &ConfigSummary::utilization_cv, nullptr));
    out.push_back(experts_by_category(a));
    if (rows) out.push_back(experts_vs_latency(a, *rows));
    out.push_back(layer_heatmap(a));
    out.push_back(
        config_bars(a, "kl_to_native", "KL divergence from native routing by config",
                    "mean KL(native || config), nats",
                    "Mean KL divergence of each config's next-token distribution from native "
                    "top-k's over the prompt positions; error bars none (mean over prompts).",
                    &ConfigSummary::kl_to_native, nullptr));
  }
  if (!a.pareto.empty()) out.push_back(pareto(a));
  bool any_delta = false;
  for (const MatchedPoint& m : a.matched) any_delta |= m.scope == "all" && std::isfinite(m.delta_nll.estimate);
  if (any_delta) out.push_back(matched_delta(a));
  return out;
}

void run_command(const std::string& command, int& status) {
  status = std::system(command.c_str());
}

}  // namespace

std::vector<PlotScript> plot_scripts(const Analysis& analysis, const std::vector<ResultRow>& rows) {
  return scripts_for(analysis, &rows);
}

std::string find_gnuplot() {
  const char* env = std::getenv("BHMOE_GNUPLOT");
  std::string exe = env && *env ? env : "gnuplot";
  int status = 0;
  run_command(shell_quote(exe) + " --version >/dev/null 2>&1", status);
  if (status != 0) {
    fail("cannot run gnuplot ('", exe,
         "'): install it (Debian: apt-get install gnuplot-nox, or run scripts/install-deps.sh) or "
         "set "
         "BHMOE_GNUPLOT to its path; the CSV/JSON outputs were written, re-run `bhmoe report --out "
         "DIR` "
         "to make the plots and REPORT.md");
  }
  return exe;
}

void render_plot(const PlotScript& plot, const std::filesystem::path& dir, const std::string& gnuplot,
                 const std::string& size) {
  std::filesystem::create_directories(dir);
  const std::string& name = plot.file.name;
  std::ostringstream script;
  script << "# " << plot.file.title << "\n"
         << "# Made by bhmoe; re-render from this folder with: gnuplot " << name << ".gp\n"
         << "set encoding utf8\nset datafile separator \"\\t\"\nset datafile missing \"NaN\"\n"
         << "set terminal pngcairo size " << size << " noenhanced font \"sans,11\"\n"
         << "set output " << gp_string(name + ".png") << "\n"
         << plot.script << "set terminal svg size " << size
         << " noenhanced font \"sans,11\" background \"white\"\n"
         << "set output " << gp_string(name + ".svg") << "\nreplot\nunset output\n";
  write_file_atomic(dir / (name + ".dat"), plot.data);
  write_file_atomic(dir / (name + ".gp"), script.str());
  std::filesystem::path log = dir / (name + ".log");
  std::filesystem::remove(dir / (name + ".png"));
  std::filesystem::remove(dir / (name + ".svg"));
  int status = 0;
  // gnuplot runs inside `dir` (the scripts name their outputs relative to it), so the log is
  // named relative to it too: `dir` itself may be relative to our working directory.
  run_command("cd " + shell_quote(dir.string()) + " && " + shell_quote(gnuplot) + " " +
                  shell_quote(name + ".gp") + " >" + shell_quote(name + ".log") + " 2>&1",
              status);
  std::string messages = std::filesystem::exists(log) ? read_file(log) : "";
  bool rendered = std::filesystem::exists(dir / (name + ".png")) &&
                  std::filesystem::file_size(dir / (name + ".png")) > 0 &&
                  std::filesystem::exists(dir / (name + ".svg"));
  if (status != 0 || !rendered) {
    fail("gnuplot failed on ", (dir / (name + ".gp")).string(), " (exit status ",
         WIFEXITED(status) ? WEXITSTATUS(status) : -1, "): ", messages.substr(0, 2000));
  }
  if (messages.empty()) std::filesystem::remove(log);
}

std::vector<PlotFile> render_plots(const Analysis& analysis, const std::vector<ResultRow>& rows,
                                   const std::filesystem::path& dir) {
  const std::string gnuplot = find_gnuplot();
  std::vector<PlotFile> files;
  for (const PlotScript& plot : scripts_for(analysis, &rows)) {
    const std::string& name = plot.file.name;
    const bool wide = name == "experts_by_category" || name == "layer_heatmap";
    render_plot(plot, dir, gnuplot, wide ? "1400,700" : "1000,650");
    files.push_back(plot.file);
  }
  return files;
}

PlotScript trace_counts_plot(const std::vector<int32_t>& counts, int64_t num_tokens,
                             int num_layers, int max_k, const std::string& router,
                             const std::vector<std::string>& token_labels, std::string name) {
  if (static_cast<int64_t>(counts.size()) != num_tokens * num_layers) {
    fail("trace plot: counts holds ", counts.size(), " values, not ", num_tokens, " x ", num_layers);
  }
  PlotScript p;
  p.file.name = std::move(name);
  p.file.title = "Experts per token and layer: " + router;
  p.file.caption =
      "Top: experts selected for each token (x) in each layer (y), darker is more. Bottom: the "
      "mean over layers per token, with the range across layers shaded.";
  std::ostringstream data;
  // Block 0: "token layer count" cells for the heatmap.
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int l = 0; l < num_layers; ++l) {
      data << t << '\t' << l << '\t' << counts[static_cast<size_t>(t * num_layers + l)] << '\n';
    }
  }
  // Block 1: "token mean min max" over layers.
  data << "\n\n";
  for (int64_t t = 0; t < num_tokens; ++t) {
    double sum = 0;
    int lo = max_k, hi = 0;
    for (int l = 0; l < num_layers; ++l) {
      const int c = counts[static_cast<size_t>(t * num_layers + l)];
      sum += c;
      lo = std::min(lo, c);
      hi = std::max(hi, c);
    }
    data << t << '\t' << number(sum / num_layers) << '\t' << lo << '\t' << hi << '\n';
  }
  p.data = data.str();
  const std::string file = gp_string(p.file.name + ".dat");
  std::string xtics;
  if (!token_labels.empty() && static_cast<int64_t>(token_labels.size()) == num_tokens &&
      num_tokens <= 96) {
    xtics = "set xtics rotate by 60 right font \",9\" (" ;
    for (int64_t t = 0; t < num_tokens; ++t) {
      xtics += (t ? ", " : "") + gp_string(token_labels[static_cast<size_t>(t)]) + " " +
               std::to_string(t);
    }
    xtics += ")\n";
  } else {
    xtics = "set xtics auto\n";
  }
  std::ostringstream s;
  // Fixed margins so both panels share the token axis (the colour box would shrink the top one).
  s << "set multiplot layout 2,1 title " << gp_string(p.file.title) << "\n"
    << "set lmargin at screen 0.07\nset rmargin at screen 0.88\n"
    << "set xrange [-0.5:" << number(static_cast<double>(num_tokens) - 0.5) << "]\n"
    << "set yrange [-0.5:" << number(num_layers - 0.5) << "]\n"
    << "set ytics 1\nset ylabel \"layer\"\nset xlabel \"\"\n" << xtics
    << "set cbrange [0:" << max_k << "]\nset cblabel \"experts selected\"\n"
    << (max_k <= 16 ? "set cbtics 1\n" : "set cbtics auto\n")
    << "set palette defined (0 \"#F7FBFF\", 1 \"#9ECAE1\", 2 \"#3182BD\", 3 \"#08306B\")\n"
    << "plot " << file << " index 0 using 1:2:3 with image notitle\n"
    << "unset colorbox\nset ytics auto\nset yrange [0:" << number(max_k * 1.05) << "]\n"
    << "set ylabel \"experts (mean over layers)\"\nset xlabel \"token\"\n"
    << "plot " << file << " index 1 using 1:3:4 with filledcurves fc rgb \"#C6DBEF\" "
    << "title \"range across layers\", \\\n  " << file
    << " index 1 using 1:2 with lines lw 2 lc rgb \"#08306B\" title \"mean\"\n"
    << "unset multiplot\n";
  p.script = s.str();
  return p;
}

}  // namespace bhmoe::experiments

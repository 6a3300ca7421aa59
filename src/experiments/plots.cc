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

// Bars whose values span more than a factor of 10 (top-64 beside BH's one or two experts) get a
// log2 y axis, so the small bars stay readable: the gnuplot lines that set it (emitted after
// category_axes, whose linear range they replace), or "" for a linear axis. Appends a note to
// `caption` when the axis is logarithmic.
std::string log_axis_if_spread(const std::vector<double>& values, std::string& caption) {
  double lo = kNaN, hi = kNaN;
  for (double v : values) {
    if (!std::isfinite(v) || v <= 0) continue;
    lo = std::isfinite(lo) ? std::min(lo, v) : v;
    hi = std::isfinite(hi) ? std::max(hi, v) : v;
  }
  if (!std::isfinite(lo) || hi / lo <= 10) return "";
  caption += " Log2 y axis: the values span more than a factor of 10.";
  std::ostringstream s;
  s << "set logscale y 2\nset yrange [" << number(lo / 1.5) << ":" << number(hi * 1.6) << "]\n";
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

// The interval every plotted mean carries, as the captions name it.
constexpr const char* kIntervalNote =
    "Error bars: 95% Student-t interval of the mean across prompts (mean ± t(0.975, n − 1) · sd / "
    "√n, n = the prompts).";

// One bar per config, coloured by rule, with the 95% t-interval of its mean across prompts: data
// columns idx, name, value, lo, hi, colour.
PlotScript config_bars(const Analysis& a, std::string name, std::string title, std::string ylabel,
                       std::string caption, double ConfigSummary::*value,
                       MeanInterval ConfigSummary::*interval) {
  PlotScript p;
  p.file = {std::move(name), std::move(title), std::move(caption) + " " + kIntervalNote};
  std::vector<const ConfigSummary*> configs = measured(a);
  std::ostringstream data;
  std::vector<std::string> labels;
  std::vector<double> tops, spread;
  for (size_t i = 0; i < configs.size(); ++i) {
    const ConfigSummary& s = *configs[i];
    const MeanInterval& ci = s.*interval;
    data << i << "\t" << field(s.config_name) << "\t" << number(s.*value) << "\t" << number(ci.lo)
         << "\t" << number(ci.hi) << "\t" << rule_color_int(s.rule) << "\n";
    labels.push_back(s.config_name);
    tops.push_back(std::isfinite(ci.hi) ? std::max(ci.hi, s.*value) : s.*value);
    spread.push_back(s.*value);
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel " << gp_string(ylabel) << "\n"
    << "set style fill solid 0.8 border -1\nset boxwidth 0.7\n"
    << "set xtics rotate by -45 nomirror\n"
    << category_axes(configs.size(), max_finite(tops) * 1.12)
    << log_axis_if_spread(spread, p.file.caption) << "plot "
    << gp_string(p.file.name + ".dat")
    << " using 1:3:(0.7):6:xtic(2) with boxes lc rgb variable notitle, \\\n"
    << "  \"\" using 1:3:4:5 with yerrorbars lc rgb \"black\" ps 0 title \"95% t-interval\"";
  std::vector<ConfigSummary> present;
  for (const ConfigSummary* c : configs) present.push_back(*c);
  s << rule_legend(rules_of(present)) << "\n";
  p.script = s.str();
  return p;
}

// "−81%" / "+5%": a signed, rounded percentage for bar labels.
std::string percent_label(double pct) {
  if (!std::isfinite(pct)) return "";
  return (pct >= 0 ? "−" : "+") + routing::format_number(std::round(std::fabs(pct))) + "%";
}

PlotScript max_k_bar(const Analysis& a) {
  PlotScript p;
  const std::string native = a.baseline.empty() ? kBaselineConfig : a.baseline;
  p.file = {
      "max_k_comparison_bar", "Mean experts per token by max_k: BH vs top-k",
      "Grouped bars: measured mean experts per token of top-k (k = max_k, exactly k by "
      "construction) and of BH (mean over its alphas, error bars: 95% t-interval across prompts "
      "of each prompt's mean over the alphas) at each max_k; labels give BH's reduction against "
      "native " + native + " (dashed line), the routing the model runs without BH."};
  std::ostringstream data;
  std::vector<double> tops, spread;
  double native_experts = kNaN;
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    const MaxKRow& m = a.max_k[i];
    if (std::isfinite(m.native_experts)) native_experts = m.native_experts;
    data << i << "\t" << m.max_k << "\t" << number(m.baseline_experts) << "\t"
         << number(m.bh_mean_experts) << "\t" << number(m.bh_ci.lo) << "\t" << number(m.bh_ci.hi)
         << "\t" << field(percent_label(m.reduction_vs_native_pct)) << "\n";
    tops.push_back(m.baseline_experts);
    tops.push_back(std::isfinite(m.bh_ci.hi) ? m.bh_ci.hi : m.bh_mean_experts);
    spread.push_back(m.baseline_experts);
    spread.push_back(m.bh_mean_experts);
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"max_k\"\nset ylabel \"mean experts per token (measured)\"\n"
    << "set style fill solid 0.85 border -1\nset boxwidth 0.38\n"
    << category_axes(a.max_k.size(), max_finite(tops) * 1.15)
    << log_axis_if_spread(spread, p.file.caption);
  if (std::isfinite(native_experts)) {
    s << "set arrow from graph 0, first " << number(native_experts) << " to graph 1, first "
      << number(native_experts) << " nohead dt 2 lw 1.5 lc rgb \"#444444\"\n";
  }
  s << "plot " << gp_string(p.file.name + ".dat")
    << " using ($1-0.2):3:xtic(2) with boxes lc rgb \"#4C72B0\" title \"top-k (k = max_k)\", \\\n"
    << "  \"\" using ($1+0.2):4 with boxes lc rgb \"#DD8452\" title \"BH (mean over alphas)\", \\\n"
    << "  \"\" using ($1+0.2):4:5:6 with yerrorbars lc rgb \"black\" ps 0 title \"95% t-interval\", "
       "\\\n"
    << "  \"\" using ($1+0.2):6:7 with labels offset 0,0.9 notitle";
  if (std::isfinite(native_experts)) {
    s << ", \\\n  NaN with lines dt 2 lw 1.5 lc rgb \"#444444\" title " << gp_string("native " + native);
  }
  s << "\n";
  p.script = s.str();
  return p;
}

// Count bins of the distribution plot: {1}, {2}, {3..4}, {5..8}, ... (powers of two), and {0} when
// a histogram holds zeros.
struct CountBin {
  int lo, hi;
  std::string label;
};
std::vector<CountBin> count_bins(int max_count, bool zero) {
  std::vector<CountBin> bins;
  if (zero) bins.push_back({0, 0, "0"});
  int lo = 1;
  for (int hi = 1; lo <= max_count; hi *= 2) {
    bins.push_back({lo, hi, lo == hi ? std::to_string(lo) : std::to_string(lo) + "–" + std::to_string(hi)});
    lo = hi + 1;
  }
  return bins;
}

// The distribution of BH's count per routing decision at each max_k, drawn so it can be seen even
// when most decisions select one expert (the box plot it replaces collapsed to a line at 1): the
// share of decisions in count bins 1, 2, 3–4, 5–8, ... as grouped bars (one per max_k) on a log
// axis, so a tail of 0.5% is as readable as a bulk of 90%.
PlotScript max_k_distribution(const Analysis& a) {
  PlotScript p;
  p.file = {
      "max_k_count_distribution", "BH experts per routing decision by max_k: share at each count",
      "Grouped bars on a log axis: for each bin of expert counts (1, 2, 3–4, 5–8, ...: bins "
      "double), the share of BH's routing decisions (every layer × token, pooled over alphas and "
      "prompts) that selected that many experts, one bar per max_k; a bin with no decisions has "
      "no bar. The mean with its 95% t-interval is in the max_k table and in max_k_saturation."};
  int max_count = 1;
  bool zero = false;
  for (const MaxKRow& m : a.max_k) {
    for (size_t c = 0; c < m.bh_histogram.size(); ++c) {
      if (m.bh_histogram[c] == 0) continue;
      if (c == 0) zero = true;
      max_count = std::max(max_count, static_cast<int>(c));
    }
  }
  const std::vector<CountBin> bins = count_bins(max_count, zero);
  // One colour per max_k, light to dark as max_k grows.
  const char* shades[] = {"#FDD0A2", "#FD8D3C", "#D94801", "#7F2704", "#4D1702", "#2B0D01"};
  const size_t groups = std::max<size_t>(a.max_k.size(), 1);
  const double width = 0.8 / static_cast<double>(groups);
  double smallest = 100;
  std::vector<std::vector<double>> shares(a.max_k.size(), std::vector<double>(bins.size(), 0));
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    const MaxKRow& m = a.max_k[i];
    int64_t total = 0;
    for (int64_t n : m.bh_histogram) total += n;
    if (total == 0) continue;
    for (size_t b = 0; b < bins.size(); ++b) {
      int64_t in = 0;
      for (size_t c = 0; c < m.bh_histogram.size(); ++c) {
        if (static_cast<int>(c) >= bins[b].lo && static_cast<int>(c) <= bins[b].hi)
          in += m.bh_histogram[c];
      }
      shares[i][b] = 100.0 * static_cast<double>(in) / static_cast<double>(total);
      if (shares[i][b] > 0) smallest = std::min(smallest, shares[i][b]);
    }
  }
  // The axis starts at the decade below the smallest share shown.
  const double bottom = std::pow(10.0, std::floor(std::log10(smallest)));
  std::ostringstream data, plot;
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    for (size_t b = 0; b < bins.size(); ++b) {
      if (!(shares[i][b] > 0)) continue;
      const double x = static_cast<double>(b) +
                       (static_cast<double>(i) - (static_cast<double>(groups) - 1) / 2.0) * width;
      data << number(x) << "\t" << number(shares[i][b]) << "\n";
    }
    data << "\n\n";
    plot << (i ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << i
         << " using 1:(sqrt($2 * " << number(bottom) << ")):($1-" << number(width * 0.45) << "):($1+"
         << number(width * 0.45) << "):(" << number(bottom) << "):2 with boxxyerror fs solid 1.0 "
         << "border lc rgb \"#555555\" fc rgb " << gp_string(shades[std::min<size_t>(i, std::size(shades) - 1)])
         << " title " << gp_string("max_k = " + std::to_string(a.max_k[i].max_k));
  }
  p.data = data.str();
  std::vector<std::string> labels;
  for (const CountBin& b : bins) labels.push_back(b.label);
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"experts selected per routing decision\"\n"
    << "set ylabel \"share of BH routing decisions (%, log scale)\"\n"
    << xtics_list(labels) << "set logscale y\nset grid ytics\n"
    << "set key outside top center horizontal\n"
    << "set xrange [-0.6:" << (static_cast<double>(bins.size()) - 0.4) << "]\n"
    << "set yrange [" << number(bottom) << ":100]\n"
    << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

PlotScript max_k_heatmap(const Analysis& a) {
  PlotScript p;
  p.file = {"max_k_alpha_heatmap", "BH mean experts per token: alpha × max_k",
            "Measured mean experts per token of each BH config; rows alpha, columns max_k; the "
            "second line of each cell is ± the half-width of its 95% t-interval across prompts."};
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
    data << x << "\t" << y << "\t" << number(c.mean_experts) << "\t"
         << number(c.ci.half_width()) << "\n";
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
    << "  \"\" using 1:2:($4 == $4 ? sprintf(\"%.2f\\n± %.2f\", $3, $4) : sprintf(\"%.2f\", $3)) "
       "with labels font \",11\"\n";
  p.script = s.str();
  return p;
}

PlotScript max_k_saturation(const Analysis& a) {
  PlotScript p;
  p.file = {
      "max_k_saturation", "Saturation: BH mean experts per token against max_k",
      "Measured mean experts per token of BH against max_k (log2 axis), one line per alpha; "
      "error bars: 95% t-interval across prompts. A flat line means raising the ceiling no longer "
      "adds experts. Top-k is left out: it uses exactly k = max_k experts (8 to " +
          std::to_string(a.max_k.empty() ? 0 : a.max_k.back().max_k) +
          " here), which would flatten BH's lines; its values are in the max_k table."};
  std::map<double, std::vector<const MaxKAlphaCell*>> by_alpha;
  for (const MaxKAlphaCell& c : a.max_k_alpha) by_alpha[c.alpha].push_back(&c);
  std::ostringstream data, plot;
  int block = 0;
  double top = 1;
  for (auto& [alpha, cells] : by_alpha) {
    std::sort(cells.begin(), cells.end(),
              [](const MaxKAlphaCell* x, const MaxKAlphaCell* y) { return x->max_k < y->max_k; });
    for (const MaxKAlphaCell* c : cells) {
      data << c->max_k << "\t" << number(c->mean_experts) << "\t" << number(c->ci.lo) << "\t"
           << number(c->ci.hi) << "\n";
      for (double v : {c->mean_experts, c->ci.hi}) {
        if (std::isfinite(v)) top = std::max(top, v);
      }
    }
    data << "\n\n";
    plot << (block ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << block
         << " using 1:2:3:4 with yerrorlines lw 2 pt 7 title "
         << gp_string("BH alpha = " + routing::format_number(alpha));
    ++block;
  }
  if (block == 0) {  // BH configs without an alpha: the pooled means per max_k.
    for (const MaxKRow& m : a.max_k) {
      data << m.max_k << "\t" << number(m.bh_mean_experts) << "\t" << number(m.bh_ci.lo) << "\t"
           << number(m.bh_ci.hi) << "\n";
      for (double v : {m.bh_mean_experts, m.bh_ci.hi}) {
        if (std::isfinite(v)) top = std::max(top, v);
      }
    }
    plot << gp_string(p.file.name + ".dat") << " using 1:2:3:4 with yerrorlines lw 2 pt 7 title "
         << "\"BH\"";
  }
  p.data = data.str();
  std::string xt = "set xtics (";
  for (size_t i = 0; i < a.max_k.size(); ++i) {
    xt += (i ? ", " : "") + gp_string(std::to_string(a.max_k[i].max_k)) + " " +
          std::to_string(a.max_k[i].max_k);
  }
  double min_k = a.max_k.front().max_k, max_k = a.max_k.back().max_k;
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set xlabel \"max_k (log2 scale)\"\nset ylabel \"BH mean experts per token (measured)\"\n"
    << "set logscale x 2\n"
    << xt << ")\n"
    << "set xrange [" << number(min_k / 1.25) << ":" << number(max_k * 1.25) << "]\n"
    << "set grid\nset key outside top center horizontal\n"
    << "set yrange [0:" << number(top * 1.15) << "]\n"
    << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

PlotScript inference_time(const Analysis& a) {
  PlotScript p;
  const std::string warm = warmup_note(a);
  p.file = {"inference_time_comparison", "Inference time per config (mean over prompts)",
            "Mean seconds per experiment of each config's own prefill + greedy decode (the quality "
            "passes are not included); the lower part of each bar is prefill. Error bars: 95% "
            "Student-t interval of the mean total time across prompts." +
                (warm.empty() ? std::string() : " " + warm)};
  std::vector<const ConfigSummary*> configs = measured(a);
  std::ostringstream data;
  std::vector<double> tops;
  for (size_t i = 0; i < configs.size(); ++i) {
    const ConfigSummary& c = *configs[i];
    data << i << "\t" << field(c.config_name) << "\t" << number(c.mean_inference_time) << "\t"
         << number(c.mean_prefill_time) << "\t" << number(c.inference_time_ci.lo) << "\t"
         << number(c.inference_time_ci.hi) << "\n";
    tops.push_back(std::isfinite(c.inference_time_ci.hi) ? c.inference_time_ci.hi
                                                          : c.mean_inference_time);
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
    << "  \"\" using 1:4 with boxes lc rgb \"#DD8452\" title \"prefill\", \\\n"
    << "  \"\" using 1:3:5:6 with yerrorbars lc rgb \"black\" ps 0 title \"95% t-interval "
       "(total)\"\n";
  p.script = s.str();
  return p;
}

// Configs whose count varies (not fixed by construction): the ones a distribution or interval of
// the count says something about.
std::vector<const ConfigSummary*> adaptive(const Analysis& a) {
  std::vector<const ConfigSummary*> out;
  for (const ConfigSummary* s : measured(a)) {
    if (!s->fixed_count()) out.push_back(s);
  }
  return out;
}

std::string config_list(const std::vector<const ConfigSummary*>& configs) {
  std::string out;
  for (const ConfigSummary* c : configs) out += (out.empty() ? "" : ", ") + c->config_name;
  return out;
}

// Mean experts per token of each adaptive config in each prompt category, with the 95% t-interval
// across the category's prompts (the box plot it replaces showed only whiskers: most decisions
// select the same few counts, so the boxes had no height).
PlotScript experts_by_category(const Analysis& a) {
  PlotScript p;
  std::vector<const ConfigSummary*> configs = adaptive(a);
  std::vector<const ConfigSummary*> fixed;
  for (const ConfigSummary* s : measured(a)) {
    if (s->fixed_count()) fixed.push_back(s);
  }
  p.file = {"experts_by_category", "Mean experts per token by prompt category and config",
            "Bars: mean experts per token of each config over the prompts of each category; error "
            "bars: 95% Student-t interval across the category's prompts (few prompts per category "
            "give wide intervals)." +
                (fixed.empty() ? std::string()
                               : " Configs with a count fixed by construction are left out (" +
                                     config_list(fixed) + ": exactly k in every category).")};
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
        data << number(pos) << "\t" << number(c.mean_experts) << "\t" << number(c.experts_ci.lo)
             << "\t" << number(c.experts_ci.hi) << "\n";
        for (double v : {c.mean_experts, c.experts_ci.hi}) {
          if (std::isfinite(v)) top = std::max(top, v);
        }
      }
    }
    data << "\n\n";
    plot << (ci ? ", \\\n  " : "") << gp_string(p.file.name + ".dat") << " index " << ci
         << " using 1:2:(" << number(width * 0.9) << ") with boxes lc rgb "
         << gp_string(palette[ci % 8]) << " title " << gp_string(a.categories[ci]) << ", \"\" index "
         << ci << " using 1:2:3:4 with yerrorbars lc rgb \"black\" ps 0 "
         << (ci ? "notitle" : "title \"95% t-interval\"");
  }
  p.data = data.str();
  std::ostringstream s;
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel \"mean experts per token\"\n"
    << "set style fill solid 0.8 border -1\n"
    << xtics_list(labels) << "set xtics rotate by -45 nomirror\n"
    << category_axes(configs.size(), top * 1.1) << "plot " << plot.str() << "\n";
  p.script = s.str();
  return p;
}

PlotScript experts_vs_latency(const Analysis& a, const std::vector<ResultRow>& rows) {
  PlotScript p;
  const std::string warm = warmup_note(a);
  p.file = {"experts_vs_latency", "Mean experts per token against inference time",
            "Large points: each config's mean experts per token and mean inference time (prefill + "
            "decode) over its prompts, coloured by rule, with 95% Student-t intervals across "
            "prompts on both axes; small grey points: the single experiments." +
                (warm.empty() ? std::string() : " " + warm)};
  std::vector<std::string> rules;
  for (const ConfigSummary* c : measured(a)) {
    if (std::find(rules.begin(), rules.end(), c->rule) == rules.end()) rules.push_back(c->rule);
  }
  std::ostringstream data, plot;
  // Block 0: every experiment.
  for (const ResultRow& r : rows) {
    if (!r.ok() || r.kind != "generate") continue;
    data << number(r.avg_experts_per_token) << "\t" << number(r.inference_time_sec) << "\n";
  }
  data << "\n\n";
  plot << gp_string(p.file.name + ".dat")
       << " index 0 using 1:2 with points pt 7 ps 0.4 lc rgb \"#BBBBBB\" title \"one experiment\"";
  for (size_t i = 0; i < rules.size(); ++i) {
    for (const ConfigSummary* c : measured(a)) {
      if (c->rule != rules[i]) continue;
      data << number(c->mean_experts) << "\t" << number(c->mean_inference_time) << "\t"
           << number(c->experts_ci.lo) << "\t" << number(c->experts_ci.hi) << "\t"
           << number(c->inference_time_ci.lo) << "\t" << number(c->inference_time_ci.hi) << "\n";
    }
    data << "\n\n";
    plot << ", \\\n  " << gp_string(p.file.name + ".dat") << " index " << i + 1
         << " using 1:2:3:4:5:6 with xyerrorbars pt 7 ps 1.2 lw 1.5 lc rgb "
         << gp_string(rule_color(rules[i])) << " title "
         << gp_string(rule_label(rules[i]) + " (config mean, 95% t-interval)");
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

// Mean experts per token by layer and config. The colour scale spans the adaptive configs' range
// only: a fixed top-64 column would otherwise set the scale and leave every BH cell white. Fixed
// configs are drawn grey with their value written in.
PlotScript layer_heatmap(const Analysis& a) {
  PlotScript p;
  std::vector<const ConfigSummary*> configs = measured(a);
  bool any_adaptive = false;
  for (const ConfigSummary* c : configs) any_adaptive |= !c->fixed_count();
  std::ostringstream adaptive_data, fixed_data;
  std::vector<std::string> labels;
  double lo = INFINITY, hi = -INFINITY;
  size_t layers = 0;
  for (size_t x = 0; x < configs.size(); ++x) {
    labels.push_back(configs[x]->config_name);
    const bool on_scale = !any_adaptive || !configs[x]->fixed_count();
    const auto& per_layer = configs[x]->per_layer_mean_experts;
    layers = std::max(layers, per_layer.size());
    for (size_t l = 0; l < per_layer.size(); ++l) {
      if (!std::isfinite(per_layer[l])) continue;
      const double half = l < configs[x]->per_layer_ci.size()
                              ? configs[x]->per_layer_ci[l].half_width()
                              : kNaN;
      (on_scale ? adaptive_data : fixed_data)
          << x << "\t" << l << "\t" << number(per_layer[l]) << "\t"
          << number(on_scale ? half : kNaN) << "\n";
      if (on_scale) {
        lo = std::min(lo, per_layer[l]);
        hi = std::max(hi, per_layer[l]);
      }
    }
  }
  if (!std::isfinite(lo)) lo = 0;
  if (!(hi > lo)) hi = lo + 1;
  p.data = adaptive_data.str() + "\n\n" + fixed_data.str();
  p.file = {"layer_heatmap", "Mean experts per token by layer and config",
            "Measured mean experts per token in each layer (rows) under each config (columns), "
            "mean over prompts" +
                std::string(any_adaptive
                                ? "; the colour scale spans the adaptive configs (" +
                                      routing::format_number(std::round(lo * 100) / 100) + " to " +
                                      routing::format_number(std::round(hi * 100) / 100) +
                                      "), configs with a count fixed by construction (top-k) are "
                                      "grey with their value written in"
                                : "") +
                ". Where there is room, the second line of a cell is ± the half-width of its 95% "
                "t-interval across prompts (also in layer_heatmap.dat, column 4)."};
  const size_t cells = configs.size() * std::max<size_t>(layers, 1);
  const bool annotate = cells <= 400;
  // Room for a second line: cells of at least ~40 px height at 700 px for the plot.
  const bool two_lines = layers <= 10;
  std::ostringstream s;
  const std::string file = gp_string(p.file.name + ".dat");
  s << "set title " << gp_string(p.file.title) << "\n"
    << "set ylabel \"layer\"\nset cblabel \"mean experts per token (adaptive configs)\"\n"
    << xtics_list(labels) << "set xtics rotate by -45 nomirror\nset tics out\n"
    << "set ytics 1\n"
    << "set xrange [-0.5:" << (static_cast<double>(configs.size()) - 0.5) << "]\n"
    << "set yrange [-0.5:" << (static_cast<double>(layers) - 0.5) << "]\n"
    << "set cbrange [" << number(lo) << ":" << number(hi) << "]\n"
    << "set palette defined (0 \"#F7FBFF\", 1 \"#9ECAE1\", 2 \"#3182BD\", 3 \"#08306B\")\n"
    << "unset key\n"
    << "plot " << file << " index 0 using 1:2:(0.5):(0.5):3 with boxxyerror fs solid 1.0 noborder "
    << "fc palette, \\\n  " << file
    << " index 1 using 1:2:(0.5):(0.5) with boxxyerror fs solid 1.0 noborder fc rgb \"#D9D9D9\"";
  if (annotate) {
    // White text on the dark half of the palette.
    const std::string mid = number((lo + hi) / 2);
    s << ", \\\n  " << file << " index 0 using 1:2:("
      << (two_lines ? "$4 == $4 ? sprintf(\"%.1f\\n±%.1f\", $3, $4) : sprintf(\"%.1f\", $3)"
                    : "sprintf(\"%.1f\", $3)")
      << "):($3 > " << mid << " ? 0xFFFFFF : 0) with labels font \",10\" tc rgb variable, \\\n  "
      << file << " index 1 using 1:2:(sprintf(\"%.0f\", $3)) with labels font \",10\"";
  }
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
    out.push_back(max_k_distribution(a));
    if (!a.max_k_alpha.empty()) out.push_back(max_k_heatmap(a));
    out.push_back(max_k_saturation(a));
  }
  if (!measured(a).empty()) {
    out.push_back(config_bars(a, "avg_experts_comparison", "Mean experts per token by config",
                              "mean experts per token (measured)",
                              "Measured mean experts per token of each config over its prompts.",
                              &ConfigSummary::mean_experts, &ConfigSummary::experts_ci));
    out.push_back(inference_time(a));
    out.push_back(config_bars(a, "expert_utilization_cv", "Expert utilization CV by config",
                              "CV of per-expert selection counts",
                              "Coefficient of variation of how often each expert was selected "
                              "(mean over prompts; lower = more even load).",
                              &ConfigSummary::utilization_cv, &ConfigSummary::utilization_cv_ci));
    if (!adaptive(a).empty()) out.push_back(experts_by_category(a));
    if (rows) out.push_back(experts_vs_latency(a, *rows));
    out.push_back(layer_heatmap(a));
    out.push_back(
        config_bars(a, "kl_to_native", "KL divergence from native routing by config",
                    "mean KL(native || config), nats per token",
                    "Mean KL divergence of each config's next-token distribution from native "
                    "top-k's over the prompt positions (mean over prompts).",
                    &ConfigSummary::kl_to_native, &ConfigSummary::kl_to_native_ci));
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

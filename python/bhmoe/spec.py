"""Router spec strings (SPEC.md section 2), parsed and checked exactly as the C++ library does.

    topk:k=8[,renorm=false][,temperature=1]
    bh:alpha=0.05,max_k=16[,min_k=1][,temperature=1][,renorm=false][,pvalues=calibrated|one-minus-prob]
    topp:p=0.7[,max_k=16][,min_k=1][,temperature=1][,renorm=false]

Errors are ValueError with the C++ library's message: `router spec "<text>": key "<key>": <why>`.
"""

import dataclasses
import math
import re

MAX_EXPERTS = 1024  # the library's kMaxExperts

_ALLOWED = {
    "topk": ("k", "renorm", "temperature"),
    "bh": ("alpha", "max_k", "min_k", "temperature", "renorm", "pvalues"),
    "topp": ("p", "max_k", "min_k", "temperature", "renorm"),
}
_REQUIRED = {"topk": ("k",), "bh": ("alpha", "max_k"), "topp": ("p",)}


@dataclasses.dataclass(frozen=True)
class RouterSpec:
    rule: str = "topk"  # "topk", "bh" or "topp"
    k: int = 8  # topk: number of experts
    alpha: float = 0.05  # bh: false discovery rate in (0, 1)
    p: float = 0.7  # topp: probability mass to reach, in (0, 1]
    min_k: int = 1  # bh, topp
    max_k: int = 16  # bh, topp (topp: min(16, N) when not given)
    max_k_given: bool = False
    temperature: float = 1.0  # softmax(r / temperature) for the weights (and top-p's mass)
    renorm: bool = False  # rescale the selected weights to sum to 1
    pvalues: str = "calibrated"  # bh: "calibrated" or "one-minus-prob"

    @property
    def uses_calibration(self):
        return self.rule == "bh" and self.pvalues == "calibrated"

    def max_count(self):
        """Columns of the ids/weights arrays a router of this spec fills."""
        return self.k if self.rule == "topk" else self.max_k

    def __str__(self):
        return canonical_spec(self)


def _fail(text, key, why):
    raise ValueError('router spec "%s": key "%s": %s' % (text, key, why))


# std::from_chars(double) in general format: no hex, no leading '+' (stripped before), no spaces.
_FLOAT = re.compile(r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$|^-?(?:inf|infinity|nan)$", re.I)


def _parse_double(text, key, value):
    v = value[1:] if value.startswith("+") else value
    if not v or not _FLOAT.match(v):
        _fail(text, key, '"%s" is not a number' % value)
    out = float(v)
    if not math.isfinite(out):
        _fail(text, key, '"%s" is not finite' % value)
    return out


def _parse_int(text, key, value):
    v = value[1:] if value.startswith("+") else value
    if not v or not re.match(r"^-?[0-9]+$", v):
        _fail(text, key, '"%s" is not an integer' % value)
    out = int(v)
    if out < -1000000000 or out > 1000000000:
        _fail(text, key, "%s is out of range" % value)
    return out


def _parse_bool(text, key, value):
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    _fail(text, key, '"%s" is not true or false' % value)


def format_number(value):
    """Shortest decimal form that reads back to the same double, as std::to_chars prints it: the
    shorter of the plain and the scientific form, the plain one on a tie ("0.05", "1", "1e-05")."""
    import numpy as np
    plain = np.format_float_positional(float(value), unique=True, trim="-")
    sci = np.format_float_scientific(float(value), unique=True, trim="-", exp_digits=2)
    return sci if len(sci) < len(plain) else plain


def _strip(s):
    return s.strip(" \t")


def _check_values(spec, text):
    if not spec.temperature > 0.0:
        _fail(text, "temperature", "%s must be > 0" % format_number(spec.temperature))
    if spec.temperature < 1e-30 or spec.temperature > 1e30:
        _fail(text, "temperature", "%s is outside [1e-30, 1e30] (float32 range)" % format_number(spec.temperature))
    if spec.rule == "topk" and spec.k < 1:
        _fail(text, "k", "%d must be >= 1" % spec.k)
    if spec.rule == "bh" and not 0.0 < spec.alpha < 1.0:
        _fail(text, "alpha", "%s is outside (0, 1)" % format_number(spec.alpha))
    if spec.rule == "topp" and not 0.0 < spec.p <= 1.0:
        _fail(text, "p", "%s is outside (0, 1]" % format_number(spec.p))
    if spec.rule != "topk":
        if spec.min_k < 1:
            _fail(text, "min_k", "%d must be >= 1" % spec.min_k)
        if spec.max_k < spec.min_k:
            _fail(text, "max_k", "%d is below min_k=%d" % (spec.max_k, spec.min_k))


def parse_router_spec(text):
    """RouterSpec of a spec string; ValueError naming the key and why, as the C++ parser."""
    if isinstance(text, RouterSpec):
        return text
    body = _strip(text)
    colon = body.find(":")
    rule = _strip(body if colon < 0 else body[:colon])
    if rule not in _ALLOWED:
        raise ValueError('router spec "%s": unknown rule "%s" (expected topk:, bh: or topp:, '
                         'e.g. "bh:alpha=0.05,max_k=16")' % (text, rule))
    params = "" if colon < 0 else body[colon + 1:]
    fields = {"rule": rule}
    seen = set()
    while _strip(params):
        comma = params.find(",")
        item = _strip(params if comma < 0 else params[:comma])
        params = "" if comma < 0 else params[comma + 1:]
        if not item:
            raise ValueError('router spec "%s": empty parameter (stray comma)' % text)
        eq = item.find("=")
        if eq < 0:
            raise ValueError('router spec "%s": parameter "%s" is not key=value' % (text, item))
        key, value = _strip(item[:eq]), _strip(item[eq + 1:])
        if key not in _ALLOWED[rule]:
            _fail(text, key, "unknown key for rule %s (allowed: %s)" % (rule, ", ".join(_ALLOWED[rule])))
        if key in seen:
            _fail(text, key, "given more than once")
        seen.add(key)
        if key in ("k", "min_k", "max_k"):
            fields[key] = _parse_int(text, key, value)
            if key == "max_k":
                fields["max_k_given"] = True
        elif key in ("alpha", "p", "temperature"):
            fields[key] = _parse_double(text, key, value)
        elif key == "renorm":
            fields[key] = _parse_bool(text, key, value)
        elif key == "pvalues":
            if value not in ("calibrated", "one-minus-prob"):
                _fail(text, key, '"%s" is not calibrated or one-minus-prob' % value)
            fields[key] = value
    for key in _REQUIRED[rule]:
        if key not in seen:
            _fail(text, key, "missing; rule %s requires it" % rule)
    spec = RouterSpec(**fields)
    _check_values(spec, text)
    return spec


def resolve_router_spec(spec, num_experts):
    """The checks that need N, and topp's default max_k = min(16, N); as the C++ library."""
    text = canonical_spec(spec)
    if num_experts < 1 or num_experts > MAX_EXPERTS:
        raise ValueError('router spec "%s": number of experts N=%d is outside [1, %d]'
                         % (text, num_experts, MAX_EXPERTS))
    if spec.rule == "topk":
        if spec.k > num_experts:
            _fail(text, "k", "%d exceeds N=%d" % (spec.k, num_experts))
        return spec
    if spec.rule == "topp" and not spec.max_k_given and spec.max_k > num_experts:
        spec = dataclasses.replace(spec, max_k=num_experts)
        text = canonical_spec(spec)
    if spec.min_k > num_experts:
        _fail(text, "min_k", "%d exceeds N=%d" % (spec.min_k, num_experts))
    if spec.max_k > num_experts:
        _fail(text, "max_k", "%d exceeds N=%d" % (spec.max_k, num_experts))
    return spec


def canonical_spec(spec):
    b = lambda v: "true" if v else "false"  # noqa: E731
    t = format_number(spec.temperature)
    if spec.rule == "topk":
        return "topk:k=%d,renorm=%s,temperature=%s" % (spec.k, b(spec.renorm), t)
    if spec.rule == "bh":
        return "bh:alpha=%s,max_k=%d,min_k=%d,temperature=%s,renorm=%s,pvalues=%s" % (
            format_number(spec.alpha), spec.max_k, spec.min_k, t, b(spec.renorm), spec.pvalues)
    return "topp:p=%s,max_k=%d,min_k=%d,temperature=%s,renorm=%s" % (
        format_number(spec.p), spec.max_k, spec.min_k, t, b(spec.renorm))

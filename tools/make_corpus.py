#!/usr/bin/python3
"""Seeded generator of bhmoe's multi-domain training corpus.

Five synthetic domains that differ in how predictable they are, all ASCII (so the Python and C++
tokenizers see no Unicode edge cases; no public-domain prose is mixed in: this Debian image ships no
literature packages):
  arithmetic  "12 + 35 = 47" lines: exact answers, a learnable skill. 10% of the (a, b, op) problems
              are reserved: they never occur in train, only in held-out text (generalisation probe).
  facts       a fixed small world (people, cities, countries, attributes) stated in templated English;
              the world is the same in every split, so the statements are consistent and learnable.
  code        Python-like and C-like snippets: indentation, brackets, recurring identifiers.
  records     key: value blocks and CSV tables about the same world's people.
  random      near-random strings (hex ids, random letter/digit keys): almost unpredictable.

Output (in --out): train.jsonl, calibration.jsonl, heldout.jsonl, one JSON document per line
{"domain": ..., "text": ...}, plus world.json (the fact world) and arithmetic_reserved.json.
The splits use disjoint random streams derived from --seed; heldout documents are never trained on.
"""

import argparse
import json
import os
import random

DOMAINS = ["arithmetic", "facts", "code", "records", "random"]

FIRST = ["Alice", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
         "Kira", "Lukas", "Mara", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Stefan", "Tara",
         "Ulrich", "Vera", "Wim", "Xenia", "Yusuf", "Zora"]
LAST = ["Brandt", "Castell", "Dorn", "Eskel", "Falk", "Gruber", "Holm", "Ivers", "Jansen",
        "Kolb", "Lind", "Moser", "Novak", "Ortiz", "Pohl", "Reyes", "Stahl", "Thorne", "Vogel", "Wendt"]
COUNTRIES = ["Varnia", "Oskeland", "Trelmar", "Quessa", "Baltora", "Myrrh", "Ceddia", "Ponthe"]
CITY_PARTS_A = ["Dorn", "Tol", "Ash", "Bren", "Kal", "Mer", "Vost", "Lun", "Grim", "Sel", "Fen", "Hal"]
CITY_PARTS_B = ["holm", "mar", "ford", "wick", "stad", "burg", "moor", "vale"]
JOBS = ["baker", "teacher", "pilot", "nurse", "carpenter", "painter", "farmer", "doctor", "engineer",
        "librarian", "fisher", "tailor", "miner", "chemist", "sailor", "judge"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "brown"]
PETS = ["cat", "dog", "parrot", "horse", "rabbit", "goat", "tortoise", "hamster", "owl"]
FOODS = ["bread", "rice", "apples", "cheese", "soup", "fish", "beans", "pears", "honey"]
RIVERS = ["Amsel", "Brook", "Cirre", "Dulve", "Erring", "Fosse", "Glane", "Hadle"]


def make_world(seed):
    """The fact world: fixed by the seed, shared by every split."""
    rng = random.Random(seed * 1000003 + 17)
    names = [f + " " + l for f in FIRST for l in LAST]
    rng.shuffle(names)
    people_names = names[:48]
    cities = []
    used = set()
    while len(cities) < 20:
        c = rng.choice(CITY_PARTS_A) + rng.choice(CITY_PARTS_B)
        if c not in used:
            used.add(c)
            cities.append(c)
    city_country = {c: COUNTRIES[i % len(COUNTRIES)] for i, c in enumerate(cities)}
    capitals = {}
    for country in COUNTRIES:
        cs = [c for c in cities if city_country[c] == country]
        capitals[country] = cs[0]
    country_river = {country: RIVERS[i] for i, country in enumerate(COUNTRIES)}
    people = []
    for name in people_names:
        people.append({
            "name": name,
            "city": rng.choice(cities),
            "job": rng.choice(JOBS),
            "colour": rng.choice(COLOURS),
            "pet": rng.choice(PETS),
            "food": rng.choice(FOODS),
            "age": rng.randint(19, 88),
            "id": rng.randint(1000, 9999),
        })
    return {"people": people, "cities": cities, "city_country": city_country,
            "capitals": capitals, "country_river": country_river}


# ---------------------------------------------------------------- arithmetic

def all_problems():
    probs = []
    for a in range(20):
        for b in range(20):
            probs.append((a, "+", b))
            if a >= b:
                probs.append((a, "-", b))
    for a in range(10):
        for b in range(10):
            probs.append((a, "*", b))
    return probs


def answer(a, op, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def split_problems(seed):
    probs = all_problems()
    rng = random.Random(seed * 7919 + 3)
    rng.shuffle(probs)
    n_res = len(probs) // 10
    return probs[n_res:], probs[:n_res]


def gen_arithmetic(rng, problems):
    lines = []
    for _ in range(rng.randint(8, 16)):
        a, op, b = rng.choice(problems)
        lines.append("%d %s %d = %d" % (a, op, b, answer(a, op, b)))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- facts

def a_an(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def fact_sentences(rng, world, person):
    p = person
    first = p["name"].split()[0]
    country = world["city_country"][p["city"]]
    opts = [
        rng.choice(["%s lives in %s.", "%s has a house in %s.", "The home of %s is in %s."])
        % (p["name"], p["city"]),
        rng.choice(["%s works as %s.", "%s is %s by trade.", "By profession, %s is %s."])
        % (p["name"], a_an(p["job"])),
        rng.choice(["The favourite colour of %s is %s.", "%s likes the colour %s best."])
        % (p["name"], p["colour"]),
        rng.choice(["%s owns %s.", "%s keeps %s at home."]) % (p["name"], a_an(p["pet"])),
        rng.choice(["%s is %d years old.", "The age of %s is %d."]) % (p["name"], p["age"]),
        "%s likes to eat %s." % (first, p["food"]),
        "%s lives in %s, a city in %s." % (p["name"], p["city"], country),
    ]
    return opts


def world_sentences(rng, world):
    c = rng.choice(world["cities"])
    country = world["city_country"][c]
    return rng.choice([
        "%s is a city in %s." % (c, country),
        "The capital of %s is %s." % (country, world["capitals"][country]),
        "The river %s flows through %s." % (world["country_river"][country], country),
        "%s lies in the country of %s." % (c, country),
    ])


def gen_facts(rng, world):
    sents = []
    if rng.random() < 0.5:
        p = rng.choice(world["people"])
        s = fact_sentences(rng, world, p)
        rng.shuffle(s)
        sents.extend(s[: rng.randint(3, len(s))])
    for _ in range(rng.randint(3, 8)):
        if rng.random() < 0.7:
            p = rng.choice(world["people"])
            sents.append(rng.choice(fact_sentences(rng, world, p)))
        else:
            sents.append(world_sentences(rng, world))
    return " ".join(sents) + "\n"


# ---------------------------------------------------------------- code

IDENTS = ["items", "total", "count", "value", "result", "index", "buffer", "limit", "offset", "node",
          "left", "right", "key", "table", "size", "name", "data", "scale", "rate", "step"]
FUNCS = ["compute", "update", "merge", "parse", "scan", "reduce", "filter", "load", "store", "check"]
NOUNS = ["total", "rows", "tree", "cache", "list", "path", "score", "range", "frame", "entry"]


def py_expr(rng, names):
    a = rng.choice(names)
    r = rng.random()
    if r < 0.3:
        return "%s %s %d" % (a, rng.choice(["+", "-", "*", "//", "%"]), rng.randint(1, 9))
    if r < 0.55:
        return "%s %s %s" % (a, rng.choice(["+", "-", "*"]), rng.choice(names))
    if r < 0.75:
        return "%s[%s]" % (a, rng.choice(names))
    if r < 0.9:
        return "len(%s)" % a
    return "%s(%s, %s)" % (rng.choice(["min", "max", "abs"]) if rng.random() < 0.5 else "min", a,
                           rng.choice(names))


def py_block(rng, names, depth, lines, budget):
    ind = "    " * depth
    n = rng.randint(1, 3)
    for _ in range(n):
        if budget[0] <= 0:
            return
        budget[0] -= 1
        r = rng.random()
        if r < 0.35 or depth >= 3:
            v = rng.choice(names)
            op = rng.choice(["=", "+=", "-="])
            lines.append("%s%s %s %s" % (ind, v, op, py_expr(rng, names)))
        elif r < 0.55:
            v = rng.choice(["i", "j", "item", "row"])
            lines.append("%sfor %s in %s:" % (ind, v, rng.choice(["range(%s)" % rng.choice(names),
                                                                   rng.choice(names)])))
            py_block(rng, names + [v], depth + 1, lines, budget)
        elif r < 0.8:
            lines.append("%sif %s %s %s:" % (ind, rng.choice(names), rng.choice(["<", ">", "==", "!="]),
                                            rng.choice(names + ["0", "1", "None"])))
            py_block(rng, names, depth + 1, lines, budget)
            if rng.random() < 0.4:
                lines.append("%selse:" % ind)
                py_block(rng, names, depth + 1, lines, budget)
        else:
            lines.append("%s%s.append(%s)" % (ind, rng.choice(names), py_expr(rng, names)))


def gen_python(rng):
    args = rng.sample(IDENTS, rng.randint(1, 3))
    name = "%s_%s" % (rng.choice(FUNCS), rng.choice(NOUNS))
    lines = ["def %s(%s):" % (name, ", ".join(args))]
    local = args + rng.sample(IDENTS, 2)
    lines.append("    %s = %s" % (local[-1], rng.choice(["0", "[]", "{}", "None", "1"])))
    py_block(rng, local, 1, lines, [rng.randint(4, 10)])
    lines.append("    return %s" % rng.choice(local))
    return "\n".join(lines) + "\n"


def gen_c(rng):
    args = rng.sample(IDENTS, rng.randint(1, 3))
    name = "%s_%s" % (rng.choice(FUNCS), rng.choice(NOUNS))
    lines = ["int %s(%s) {" % (name, ", ".join("int %s" % a for a in args))]
    acc = rng.choice([i for i in IDENTS if i not in args])
    lines.append("    int %s = 0;" % acc)
    for _ in range(rng.randint(1, 3)):
        a = rng.choice(args)
        r = rng.random()
        if r < 0.4:
            lines.append("    for (int i = 0; i < %s; i++) {" % a)
            lines.append("        %s += %s[i] * %d;" % (acc, rng.choice(args), rng.randint(2, 9)))
            lines.append("    }")
        elif r < 0.7:
            lines.append("    if (%s > %d) {" % (a, rng.randint(0, 99)))
            lines.append("        %s = %s(%s, %s);" % (acc, rng.choice(FUNCS), a, acc))
            lines.append("    }")
        else:
            lines.append("    %s = (%s + %s) %% %d;" % (acc, acc, a, rng.randint(2, 64)))
    lines.append("    return %s;" % acc)
    lines.append("}")
    return "\n".join(lines) + "\n"


def gen_code(rng):
    parts = [gen_python(rng) if rng.random() < 0.6 else gen_c(rng) for _ in range(rng.randint(1, 2))]
    return "\n".join(parts)


# ---------------------------------------------------------------- records

def gen_records(rng, world):
    people = rng.sample(world["people"], rng.randint(3, 6))
    if rng.random() < 0.5:
        blocks = []
        for p in people:
            blocks.append("id: %d\nname: %s\ncity: %s\ncountry: %s\njob: %s\nage: %d\n" % (
                p["id"], p["name"], p["city"], world["city_country"][p["city"]], p["job"], p["age"]))
        return "\n".join(blocks)
    cols = ["id", "name", "city", "job", "age", "pet"]
    rows = [",".join(cols)]
    for p in people:
        rows.append("%d,%s,%s,%s,%d,%s" % (p["id"], p["name"], p["city"], p["job"], p["age"], p["pet"]))
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- random

def gen_random(rng):
    lines = []
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    for _ in range(rng.randint(4, 9)):
        r = rng.random()
        if r < 0.35:
            lines.append("%08x%08x" % (rng.getrandbits(32), rng.getrandbits(32)))
        elif r < 0.7:
            lines.append(" ".join("".join(rng.choice(alnum) for _ in range(rng.randint(2, 7)))
                                  for _ in range(rng.randint(3, 7))))
        else:
            lines.append("%s=%s" % ("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4)),
                                    "".join(rng.choice(alnum + "ABCDEFXYZ") for _ in range(12))))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- driver

def gen_doc(rng, domain, world, problems):
    if domain == "arithmetic":
        return gen_arithmetic(rng, problems)
    if domain == "facts":
        return gen_facts(rng, world)
    if domain == "code":
        return gen_code(rng)
    if domain == "records":
        return gen_records(rng, world)
    return gen_random(rng)


def gen_split(seed, stream, n_docs, world, problems, weights):
    rng = random.Random(seed * 1000 + stream)
    docs = []
    for i in range(n_docs):
        domain = rng.choices(DOMAINS, weights=weights)[0]
        docs.append({"domain": domain, "text": gen_doc(rng, domain, world, problems)})
    return docs


def gen_per_domain(seed, stream, n_per_domain, world, problems):
    rng = random.Random(seed * 1000 + stream)
    docs = []
    for domain in DOMAINS:
        for _ in range(n_per_domain):
            docs.append({"domain": domain, "text": gen_doc(rng, domain, world, problems)})
    return docs


def write_jsonl(path, docs):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-docs", type=int, default=60000)
    ap.add_argument("--calibration-docs", type=int, default=400)
    ap.add_argument("--heldout-docs-per-domain", type=int, default=60)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    world = make_world(args.seed)
    train_problems, reserved = split_problems(args.seed)
    all_probs = train_problems + reserved
    # Training mixture: the arithmetic and fact skills get the most text.
    weights = [0.3, 0.25, 0.2, 0.15, 0.1]
    train = gen_split(args.seed, 1, args.train_docs, world, train_problems, weights)
    calib = gen_split(args.seed, 2, args.calibration_docs, world, train_problems, weights)
    # Held-out arithmetic draws from every problem, so ~10% of its lines were never trained on.
    held = gen_per_domain(args.seed, 3, args.heldout_docs_per_domain, world, all_probs)
    write_jsonl(os.path.join(args.out, "train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "calibration.jsonl"), calib)
    write_jsonl(os.path.join(args.out, "heldout.jsonl"), held)
    with open(os.path.join(args.out, "world.json"), "w") as f:
        json.dump(world, f, indent=1)
    with open(os.path.join(args.out, "arithmetic_reserved.json"), "w") as f:
        json.dump([list(p) for p in reserved], f)
    for name, docs in (("train", train), ("calibration", calib), ("heldout", held)):
        chars = sum(len(d["text"]) for d in docs)
        print("make_corpus: %s: %d docs, %d chars" % (name, len(docs), chars))


if __name__ == "__main__":
    main()

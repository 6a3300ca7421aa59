# Thin wrappers over CMake; see README.md. Every target installs missing Debian packages first.
BUILD_DIR    ?= build
SANITIZE_DIR ?= build-sanitize
JOBS         ?= $(shell nproc)
CMAKE_FLAGS  ?=
MODEL        ?= models/bhmoe-tiny-moe
RUN_OUT      ?= out/seed
RUN_ARGS     ?=

.PHONY: all deps build test test-sanitize fuzz run bench clean format

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja: CMakeLists.txt | deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (CI runs this once).
test-sanitize: deps
	cmake -S . -B $(SANITIZE_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBHMOE_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build $(SANITIZE_DIR) -j $(JOBS)
	ctest --test-dir $(SANITIZE_DIR) --output-on-failure -j $(JOBS) -LE slow

# The main job: the seed experiment (16 routing configs x 12 prompts) on the bundled model, into
# $(RUN_OUT) (results.jsonl, CSVs, plots/, REPORT.md). A re-run resumes; delete $(RUN_OUT) to start over.
# libFuzzer targets of the parsers (fuzz/, clang + ASan + UBSan), FUZZ_SECONDS each (CI: 30).
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/install-deps.sh --fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

run: build
	./$(BUILD_DIR)/bhmoe run --model $(MODEL) --out $(RUN_OUT) $(RUN_ARGS)

clean:
	rm -rf $(BUILD_DIR) $(SANITIZE_DIR)

format:
	find src tools -name '*.cc' -o -name '*.h' | xargs clang-format -i

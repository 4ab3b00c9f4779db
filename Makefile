# nextup: one Makefile, everything under build/.
#   make            build/nextup
#   make test       unit tests (cmocka) + end-to-end tests on loopback / netns
#   make asan       the same tests with ASan+UBSan builds (build-asan/)
#   make demo       three replicas, nextup, a client load and a restart
#   make bench      wrk against direct, nextup, nginx, HAProxy
#   make fuzz       libFuzzer on the HTTP/1 head code for FUZZ_SECONDS (60)
# V=1 shows full commands. SAN=address,undefined builds with sanitizers.

.DELETE_ON_ERROR:
.SUFFIXES:

CC      ?= cc
BUILD   ?= build
SAN     ?=
Q       := $(if $(V),,@)

LLHTTP_SRC_DIR := /usr/share/llhttp
LLHTTP_INC_DIR := /usr/share/include/llhttp

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Werror
CFLAGS  ?= -O2 -g
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -pthread -I$(LLHTTP_INC_DIR) -Isidecar -Ibpf -I$(BUILD)/bpf
ifneq ($(SAN),)
SAN_FLAGS := -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
# Each compile writes a .d next to its output naming the headers it read, so that a header
# rebuilds only what includes it; -MP: a header deleted or renamed is no "No rule to make target".
DEPFLAGS := -MMD -MP
LDLIBS  := -levent_pthreads -levent -lbpf -lelf -lz -lssl -lcrypto -ldl -lpthread

SIDECAR_SRCS := $(filter-out sidecar/main.c,$(wildcard sidecar/*.c))
SIDECAR_OBJS := $(SIDECAR_SRCS:sidecar/%.c=$(BUILD)/obj/%.o)
LLHTTP_OBJS  := $(BUILD)/obj/llhttp/llhttp.o $(BUILD)/obj/llhttp/api.o $(BUILD)/obj/llhttp/http.o
UNIT_SRCS    := $(wildcard tests/unit/test_*.c)
UNIT_BINS    := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

# BPF: vmlinux.h, the CO-RE object and its skeleton (rules in bpf/bpf.mk; BPF_SKELS lists the headers).
BPF_SKELS :=
-include bpf/bpf.mk

.PHONY: all test test-bench-lib unit e2e asan demo bench compare clean examples test-deploy deploy-image-check fuzz fuzz-smoke

all: $(BUILD)/nextup examples

# -rdynamic: decision plugins (NEXTUP_DECISION_PLUGIN) call the nextup_* accessors in the binary.
$(BUILD)/nextup: $(BUILD)/obj/main.o $(BUILD)/libnextup.a
	@echo "  LD      $@"
	$(Q)$(CC) $(SAN_FLAGS) -pthread -rdynamic -o $@ $< $(BUILD)/libnextup.a $(LDLIBS)

# libnextup: everything but main(), for programs that bring their own hooks (sidecar/nextup.h).
$(BUILD)/libnextup.a: $(SIDECAR_OBJS) $(LLHTTP_OBJS)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/examples/retry_gateway_plugin.so: examples/retry_gateway_plugin.c | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@echo "  CC      $< (plugin)"
	$(Q)$(CC) $(BASE_CFLAGS) $(CFLAGS) $(WARN) $(DEPFLAGS) -shared -fPIC -o $@ $<

$(BUILD)/examples/embedded: examples/embedded.c $(BUILD)/libnextup.a
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(BASE_CFLAGS) $(CFLAGS) $(WARN) $(SAN_FLAGS) $(DEPFLAGS) -rdynamic -o $@ $< $(BUILD)/libnextup.a $(LDLIBS)

examples: $(BUILD)/examples/retry_gateway_plugin.so $(BUILD)/examples/embedded

# Headers come from the .d files (included at the end). The one generated header a source
# includes, the BPF skeleton, is named here: on a clean build it must exist before the
# compiler looks for it, and only health_bpf.c includes it.
$(BUILD)/obj/%.o: sidecar/%.c | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(BASE_CFLAGS) $(CFLAGS) $(WARN) $(SAN_FLAGS) $(DEPFLAGS) -c -o $@ $<

$(BUILD)/obj/health_bpf.o: $(BPF_SKELS)

# The variant build (bpf/bpf.mk): only health_bpf.o differs, it includes the variant's skeleton.
$(BPF_VARIANT)/health_bpf.o: sidecar/health_bpf.c $(BPF_VARIANT)/peer_stats.skel.h | $(BUILD)/.deps-build
	@echo "  CC      $< (variant)"
	$(Q)$(CC) -I$(BPF_VARIANT) $(BASE_CFLAGS) $(CFLAGS) $(WARN) $(SAN_FLAGS) -c -o $@ $<

$(BPF_VARIANT)/nextup: $(BUILD)/obj/main.o $(BPF_VARIANT)/health_bpf.o $(filter-out $(BUILD)/obj/health_bpf.o,$(SIDECAR_OBJS)) $(LLHTTP_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(SAN_FLAGS) -pthread -rdynamic -o $@ $^ $(LDLIBS)

# llhttp comes from Debian's node-llhttp as C sources; its generated code is
# not ours to fix, so it gets quieter flags and is never edited.
$(BUILD)/obj/llhttp/%.o: $(LLHTTP_SRC_DIR)/%.c | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@echo "  CC      $< (llhttp)"
	$(Q)$(CC) -std=c11 -I$(LLHTTP_INC_DIR) $(CFLAGS) $(SAN_FLAGS) -w -c -o $@ $<

# A fresh machine gets its Debian packages on the first build (dpkg is asked first).
$(BUILD)/.deps-build: scripts/deps.sh
	@mkdir -p $(BUILD)
	$(Q)scripts/deps.sh build
	@touch $@

$(LLHTTP_SRC_DIR)/%.c: | $(BUILD)/.deps-build
	@test -f $@ || { echo "missing $@: is node-llhttp installed?" >&2; exit 1; }

# Installed by deps.sh during this very build, the sources look to make like files the rule
# above made, so intermediate: without this, make deletes the package's files once the
# objects are built (seen on a fresh machine: /usr/share/llhttp/*.c gone after the first make).
.PRECIOUS: $(LLHTTP_SRC_DIR)/%.c

# The test's .d adds the headers it includes to $^: they are not inputs.
$(BUILD)/tests/test_%: tests/unit/test_%.c $(SIDECAR_OBJS) $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(BASE_CFLAGS) $(CFLAGS) $(WARN) $(SAN_FLAGS) $(DEPFLAGS) -rdynamic -o $@ $(filter %.c %.o,$^) \
		$(LDLIBS) -lcmocka

unit: $(UNIT_BINS) examples
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

e2e: $(BUILD)/nextup $(BPF_VARIANT)/nextup examples
	NEXTUP_BIN=$(abspath $(BUILD)/nextup) NEXTUP_EXAMPLES=$(abspath $(BUILD)/examples) python3 -m unittest discover -s tests/e2e -p 'test_*.py' -v

# libFuzzer on sidecar/http1.c and http1_check.c (tests/fuzz/fuzz_http1.c), with ASan and UBSan, in build-fuzz/.
# fuzz-smoke (part of make test): a fixed seed and a fixed number of runs over the seeds, so
# that it is the same run every time; fuzz: FUZZ_SECONDS (60) of new inputs, kept in build-fuzz/corpus.
FUZZ_BUILD   := build-fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SECONDS ?= 60
FUZZ_LLHTTP  := $(FUZZ_BUILD)/llhttp.o $(FUZZ_BUILD)/api.o $(FUZZ_BUILD)/http.o
FUZZ_OBJS    := $(FUZZ_BUILD)/obj/fuzz_http1.o $(FUZZ_BUILD)/obj/http1.o $(FUZZ_BUILD)/obj/http1_check.o

$(FUZZ_BUILD)/%.o: $(LLHTTP_SRC_DIR)/%.c | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@echo "  CC      $< (llhttp, fuzz)"
	$(Q)clang -std=c11 -I$(LLHTTP_INC_DIR) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link -w -c -o $@ $<

# Compiled one source per command: a compile of two sources writes one .d, the last one's.
$(FUZZ_BUILD)/obj/fuzz_http1.o: tests/fuzz/fuzz_http1.c
$(FUZZ_BUILD)/obj/http1.o: sidecar/http1.c
$(FUZZ_BUILD)/obj/http1_check.o: sidecar/http1_check.c
$(FUZZ_OBJS): | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@echo "  CC      $< (fuzz)"
	$(Q)clang $(BASE_CFLAGS) -O1 -g $(WARN) $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(DEPFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/fuzz_http1: $(FUZZ_OBJS) $(FUZZ_LLHTTP)
	@echo "  LD      $@ (libFuzzer)"
	$(Q)clang $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ -levent

# libFuzzer writes new inputs into its first directory: a scratch one, never the seeds.
fuzz-smoke: $(FUZZ_BUILD)/fuzz_http1
	$(Q)rm -rf $(FUZZ_BUILD)/smoke && mkdir -p $(FUZZ_BUILD)/smoke
	$(Q)$(FUZZ_BUILD)/fuzz_http1 -seed=1 -runs=200000 -max_len=2048 -artifact_prefix=$(FUZZ_BUILD)/ \
		$(FUZZ_BUILD)/smoke tests/fuzz/seeds/http1 2>$(FUZZ_BUILD)/smoke.log \
		|| { grep -E -m3 'property broken|runtime error|ERROR: AddressSanitizer|SUMMARY' $(FUZZ_BUILD)/smoke.log; \
		     echo "fuzz-smoke: FAILED (log $(FUZZ_BUILD)/smoke.log, input $(FUZZ_BUILD)/crash-*)"; exit 1; }
	$(Q)tail -n 1 $(FUZZ_BUILD)/smoke.log

fuzz: $(FUZZ_BUILD)/fuzz_http1
	@mkdir -p $(FUZZ_BUILD)/corpus
	$(FUZZ_BUILD)/fuzz_http1 -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -artifact_prefix=$(FUZZ_BUILD)/ \
		$(FUZZ_BUILD)/corpus tests/fuzz/seeds/http1

# Offline checks of deploy/ (Kubernetes manifests, Dockerfile) against the built nextup.
# npm ci installs the pinned packages into tests/deploy/node_modules.
test-deploy: $(BUILD)/nextup
	NEXTUP_BIN=$(abspath $(BUILD)/nextup) tests/deploy/run.sh

# Optional: builds deploy/Dockerfile for real with podman and runs the image as each variant's
# pod would (root; installs podman, runc, debootstrap if missing; needs the Debian mirror).
deploy-image-check:
	tests/deploy/image-check.sh

test:
	$(Q)scripts/deps.sh test
	$(Q)$(MAKE) --no-print-directory unit fuzz-smoke e2e test-deploy test-bench-lib

# bench/lib.sh's parsing of strace -c tables (no benchmark is run).
test-bench-lib:
	$(Q)tests/bench/strace_calls_test.sh

asan:
	$(Q)scripts/deps.sh test
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan SAN=address,undefined CFLAGS="-O1 -g" unit e2e

demo:
	$(Q)scripts/deps.sh demo
	$(Q)$(MAKE) --no-print-directory $(BUILD)/nextup
	$(Q)scripts/demo.sh $(BUILD)/nextup

# The rolling restart through nextup, nginx and HAProxy, side by side (tests/compare/README.md).
compare:
	$(Q)scripts/deps.sh bench
	$(Q)$(MAKE) --no-print-directory $(BUILD)/nextup
	NEXTUP_BIN=$(abspath $(BUILD)/nextup) python3 tests/compare/rolling_restart.py --runs 3
	NEXTUP_BIN=$(abspath $(BUILD)/nextup) python3 tests/compare/rolling_restart.py --runs 3 --overlap

bench:
	$(Q)scripts/deps.sh bench
	$(Q)$(MAKE) --no-print-directory $(BUILD)/nextup
	$(Q)bench/run.sh $(BUILD)/nextup

clean:
	rm -rf build build-asan build-fuzz

-include $(wildcard $(BUILD)/obj/*.d $(BUILD)/tests/*.d $(BUILD)/examples/*.d $(FUZZ_BUILD)/obj/*.d)

# bpf/bpf.mk: the CO-RE object and its skeleton, included by the top Makefile.
# Uses BUILD and Q from there; adds the skeleton to BPF_SKELS (what health_bpf.o, which includes it, waits for).
#   $(BUILD)/bpf/vmlinux.h           this kernel's types, from its BTF
#   $(BUILD)/bpf/peer_stats.bpf.o    clang -target bpf, then bpftool gen object (DWARF stripped, BTF kept)
#   $(BUILD)/bpf/peer_stats.skel.h   bpftool gen skeleton: the object embedded, open/load/attach helpers

# Included before the top Makefile's first target: the rules below must not become the default goal.
bpf_mk_default_goal := $(.DEFAULT_GOAL)

BPFTOOL    ?= bpftool
BPF_CLANG  ?= clang
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
# bpf_tracing.h picks the register layout from the target arch (BPF_PROG itself does not need it).
BPF_ARCH   := $(patsubst x86_64,x86,$(patsubst aarch64,arm64,$(shell uname -m)))
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -Wall -Werror

BPF_SKELS += $(BUILD)/bpf/peer_stats.skel.h
# Made only by pattern rules: without this make deletes them as intermediates after the build
# (the skeleton too: being an order-only prerequisite does not count), and rebuilds them every time.
.SECONDARY: $(BUILD)/bpf/vmlinux.h $(BUILD)/bpf/peer_stats.bpf.o $(BUILD)/bpf/peer_stats.skel.h

# vmlinux.h is generated once: CO-RE relocates field offsets at load time, so a header from an
# older or newer kernel still works. Delete it to regenerate.
$(BUILD)/bpf/vmlinux.h: | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@test -r $(VMLINUX_BTF) || { echo "bpf.mk: $(VMLINUX_BTF) is missing: this kernel has no BTF" \
		"(build it with CONFIG_DEBUG_INFO_BTF=y), so the CO-RE BPF programs cannot be built" \
		"(set VMLINUX_BTF=<file> to use BTF from another kernel image)" >&2; exit 1; }
	@echo "  GEN     $@"
	$(Q)$(BPFTOOL) btf dump file $(VMLINUX_BTF) format c > $@.tmp && mv $@.tmp $@

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c bpf/%.h $(BUILD)/bpf/vmlinux.h | $(BUILD)/.deps-build
	@mkdir -p $(dir $@)
	@echo "  BPF     $<"
	$(Q)$(BPF_CLANG) $(BPF_CFLAGS) -I$(BUILD)/bpf -Ibpf -c $< -o $(@:.o=.tmp.o)
	$(Q)$(BPFTOOL) gen object $@ $(@:.o=.tmp.o)
	$(Q)rm -f $(@:.o=.tmp.o)

$(BUILD)/bpf/%.skel.h: $(BUILD)/bpf/%.bpf.o
	@echo "  GEN-SKEL $@"
	$(Q)$(BPFTOOL) gen skeleton $< > $@.tmp && mv $@.tmp $@

# Another nextup build, for the tests of two builds on one node (tests/e2e/test_bpf_node.py): the same
# sources with a build tag in the BPF object, hence another program set (another <set> directory).
#   $(BUILD)/bpf-variant/nextup
BPF_VARIANT := $(BUILD)/bpf-variant
.SECONDARY: $(BPF_VARIANT)/peer_stats.bpf.o $(BPF_VARIANT)/peer_stats.skel.h
$(BPF_VARIANT)/peer_stats.bpf.o: bpf/peer_stats.bpf.c bpf/peer_stats.h $(BUILD)/bpf/vmlinux.h
	@mkdir -p $(dir $@)
	@echo "  BPF     $< (variant)"
	$(Q)$(BPF_CLANG) $(BPF_CFLAGS) -DPEER_STATS_BUILD_TAG='"variant"' -I$(BUILD)/bpf -Ibpf -c $< -o $(@:.o=.tmp.o)
	$(Q)$(BPFTOOL) gen object $@ $(@:.o=.tmp.o)
	$(Q)rm -f $(@:.o=.tmp.o)

$(BPF_VARIANT)/peer_stats.skel.h: $(BPF_VARIANT)/peer_stats.bpf.o
	$(Q)$(BPFTOOL) gen skeleton $< > $@.tmp && mv $@.tmp $@

# Empty (the usual case) means: the next target the top Makefile defines, i.e. `all`.
.DEFAULT_GOAL := $(bpf_mk_default_goal)

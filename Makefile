# reliablewriter build.
#   make                 Lua 5.4 modules into build/lua5.4/reliablewriter/:
#                        core.so (require "reliablewriter") and testbed.so
#                        (require "reliablewriter.testbed")
#   make LUA=luajit      the same for LuaJIT 2.1 into build/luajit/
#   make bins            programs into bin/
#   make check           C unit tests (plain); check-asan, check-tsan: sanitizer builds
#   make test            everything the README promises (scripts/test.sh)
#   make demo            the upload demo on the in-process fake GCS
#   make bench           the benchmark table and chart (bench/results/latest.md, .png; ~10 min)
LUA ?= lua5.4
ifeq ($(LUA),luajit)
  LUA_PC := luajit
else
  LUA_PC := lua5.4
endif
B ?= build/$(LUA)

CC ?= cc
PKGS := libcurl jansson libisal openssl
TB_PKGS := libmicrohttpd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) $(TB_PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
TB_PKG_LIBS := $(shell pkg-config --libs $(TB_PKGS) 2>/dev/null)
ifdef LUA_INCDIR
  LUA_CFLAGS := -I$(LUA_INCDIR)
  B := build/rock$(subst /,_,$(LUA_INCDIR))
else
  LUA_CFLAGS := $(shell pkg-config --cflags $(LUA_PC) 2>/dev/null)
endif

WARN := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS ?= -O2 -g
# -fvisibility=hidden: each .so exports only its luaopen_* (RW_LUA_EXPORT).
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -pthread $(WARN) $(CFLAGS) -Icsrc $(PKG_CFLAGS)
LDLIBS := -Wl,--as-needed $(PKG_LIBS) -pthread -lm
TB_LDLIBS := -Wl,--as-needed $(TB_PKG_LIBS) $(PKG_LIBS) -pthread -lm

# Layers; lua -> io -> sinks -> net -> core. proxy uses core/net/io.
# The test bed (csrc/testbed) uses the core, never the other way.
LIB_SRC := $(wildcard csrc/core/*.c csrc/net/*.c csrc/sinks/*.c csrc/io/*.c csrc/proxy/*.c)
LUA_SRC := $(wildcard csrc/lua/*.c)
TB_SRC := $(wildcard csrc/testbed/*.c)
TB_LUA_SRC := $(wildcard csrc/testbed/lua/*.c)
HDRS := $(wildcard csrc/*/*.h csrc/testbed/lua/*.h)

LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o)
LUA_OBJ := $(LUA_SRC:%.c=$(B)/obj/%.o)
TB_OBJ := $(TB_SRC:%.c=$(B)/obj/%.o)
TB_LUA_OBJ := $(TB_LUA_SRC:%.c=$(B)/obj/%.o)
MODULE := $(B)/reliablewriter/core.so
TB_MODULE := $(B)/reliablewriter/testbed.so
# The core's C objects as an archive: testbed.so takes the members it needs
# (its own hidden copy; see csrc/testbed/lua/module.c).
CORE_LIB := $(B)/libreliablewriter.a

.PHONY: all module testbed bins check check-asan check-tsan test demo clean deps install install-testbed
all: module testbed

module: $(MODULE)
testbed: $(TB_MODULE)

$(B)/obj/csrc/lua/%.o: csrc/lua/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LUA_CFLAGS) -c $< -o $@

$(B)/obj/csrc/testbed/lua/%.o: csrc/testbed/lua/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LUA_CFLAGS) -c $< -o $@

$(B)/obj/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(MODULE): $(LIB_OBJ) $(LUA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ $^ $(LDLIBS)

$(CORE_LIB): $(LIB_OBJ) $(B)/obj/csrc/lua/lrw.o
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(TB_MODULE): $(TB_OBJ) $(TB_LUA_OBJ) $(CORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ $(TB_OBJ) $(TB_LUA_OBJ) $(CORE_LIB) $(TB_LDLIBS)

# ---- programs ----
BIN_MAINS := $(wildcard csrc/bin/*.c)
BINS := $(BIN_MAINS:csrc/bin/%.c=bin/reliablewriter-%)
bins: $(BINS)
# The proxy is production code: the core only, never the test bed.
bin/reliablewriter-proxy: csrc/bin/proxy.c $(LIB_SRC) $(HDRS)
	@mkdir -p bin
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB_SRC) $(LDLIBS)
bin/reliablewriter-%: csrc/bin/%.c $(LIB_SRC) $(TB_SRC) $(HDRS)
	@mkdir -p bin
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB_SRC) $(TB_SRC) $(TB_LDLIBS)

# ---- C unit tests ----
comma := ,
CTESTS := $(wildcard tests/c/test_*.c)
define ctest_rules
build/ctest-$(1)/%: tests/c/%.c tests/c/ctest.h tests/c/writer_fixture.h $(LIB_SRC) $(TB_SRC) $(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) $(2) -Itests/c -o $$@ $$< $$(LIB_SRC) $$(TB_SRC) $$(TB_LDLIBS)
check-$(1): $(CTESTS:tests/c/%.c=build/ctest-$(1)/%)
	@set -e; for t in $$^; do echo "== $$$$t"; $(3) ./$$$$t; done
endef
$(eval $(call ctest_rules,plain,-O1,))
$(eval $(call ctest_rules,asan,-O1 -fsanitize=address$(comma)undefined -fno-omit-frame-pointer -fno-sanitize-recover=all,ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1))
$(eval $(call ctest_rules,tsan,-O1 -fsanitize=thread,TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"))
check: check-plain

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

.PHONY: bench
bench:
	bash bench/run.sh

deps:
	bash scripts/deps.sh all

# luarocks (build.type = "make") passes INST_LIBDIR and INST_LUADIR.
install: $(MODULE)
	install -d $(INST_LIBDIR)/reliablewriter $(INST_LUADIR)/reliablewriter
	install -m 755 $(MODULE) $(INST_LIBDIR)/reliablewriter/core.so
	install -m 644 lua/reliablewriter/*.lua $(INST_LUADIR)/reliablewriter/

# The reliablewriter-testbed rock.
install-testbed: $(TB_MODULE)
	install -d $(INST_LIBDIR)/reliablewriter
	install -m 755 $(TB_MODULE) $(INST_LIBDIR)/reliablewriter/testbed.so

clean:
	rm -rf build bin/reliablewriter-*

/* The test bed's binding files (require "reliablewriter.testbed"). */
#ifndef RW_LTB_H
#define RW_LTB_H
#include "lua/lrw.h"

/* Each pushes one value: a table, or (faulty) the constructor. */
int rw_tb_open_fakegcs(lua_State *L);
int rw_tb_open_faults(lua_State *L);
int rw_tb_open_faulty(lua_State *L);
int rw_tb_open_probes(lua_State *L);

#endif

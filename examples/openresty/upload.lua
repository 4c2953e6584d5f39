-- For `content_by_lua_file .../upload.lua`: the handler lives in rw_upload.lua
-- (put examples/openresty/ on lua_package_path).
return require("rw_upload").handle()

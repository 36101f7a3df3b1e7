;; hello() writes "hello\n" to stdout through WASI fd_write and returns 0.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; the text at offset 16; one iovec {ptr=16, len=6} at offset 0
  (data (i32.const 16) "hello\n")
  (func (export "hello") (result i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    ;; fd 1 (stdout), iovecs at 0, one of them, bytes written go to offset 8
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    i32.const 0))

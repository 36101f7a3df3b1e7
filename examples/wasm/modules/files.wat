;; Functions that use mounted files (WASI, the mount folder preopened as fd 3):
;;   data_size()      -> bytes in "data.txt"   (a deployment file attached to the module)
;;   input_size()     -> bytes in "input.bin"  (an execution file sent with the call)
;;   make_output(n)   -> n, after writing n bytes "x" to "out.txt" (an output file)
;; A file that cannot be opened gives -1.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..7: an iovec; 8: a count; 12: an opened fd; names from 64; buffer from 1024
  (data (i32.const 64) "data.txt")
  (data (i32.const 80) "input.bin")
  (data (i32.const 96) "out.txt")

  ;; open the file named at (ptr, len) in the mount folder; its fd, or -1
  (func $open (param $ptr i32) (param $len i32) (param $oflags i32) (result i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (local.get $ptr) (local.get $len)
          (local.get $oflags) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 12))
      (then (return (i32.const -1))))
    (i32.load (i32.const 12)))

  ;; the number of bytes in the file named at (ptr, len), or -1
  (func $size (param $ptr i32) (param $len i32) (result i32)
    (local $fd i32) (local $total i32)
    (local.set $fd (call $open (local.get $ptr) (local.get $len) (i32.const 0)))
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (return (i32.const -1))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (block $done
      (loop $more
        (br_if $done (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $total (i32.add (local.get $total) (i32.load (i32.const 8))))
        (br $more)))
    (drop (call $fd_close (local.get $fd)))
    (local.get $total))

  (func (export "data_size") (result i32)
    (call $size (i32.const 64) (i32.const 8)))

  (func (export "input_size") (result i32)
    (call $size (i32.const 80) (i32.const 9)))

  (func (export "make_output") (param $n i32) (result i32)
    (local $fd i32)
    ;; O_CREAT (1) | O_TRUNC (8)
    (local.set $fd (call $open (i32.const 96) (i32.const 7) (i32.const 9)))
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (return (i32.const -1))))
    (memory.fill (i32.const 1024) (i32.const 120) (local.get $n))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $fd_close (local.get $fd)))
    (local.get $n)))

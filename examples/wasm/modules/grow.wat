;; grow() adds 1 MiB (16 pages) to its memory until memory.grow is refused (-1),
;; then traps: the agent reports that the memory cap (--memory-mb) was reached.
(module
  (memory (export "memory") 1)
  (func (export "grow") (result i32)
    (loop $more
      i32.const 16
      memory.grow
      i32.const -1
      i32.ne
      br_if $more)
    unreachable))

;; spin() never returns: the agent stops it by fuel (--fuel) or by time (--call-timeout).
(module
  (func (export "spin") (result i32)
    (loop $forever
      br $forever)
    i32.const 0))

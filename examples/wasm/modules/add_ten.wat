;; add_ten(x) = x + 10: the second step of the example chain.
(module
  (func (export "add_ten") (param $x i32) (result i32)
    local.get $x
    i32.const 10
    i32.add))

;; double(x) = x * 2: the first step of the example chain.
(module
  (func (export "double") (param $x i32) (result i32)
    local.get $x
    i32.const 2
    i32.mul))

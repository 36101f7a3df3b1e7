;; read_tenths() = trunc(temperature() * 10), using the agent's `temperature` sensor
;; (offered only when the agent runs with --sensor temperature=VALUE).
(module
  (import "env" "temperature" (func $temperature (result f32)))
  (func (export "read_tenths") (result i32)
    call $temperature
    f32.const 10
    f32.mul
    i32.trunc_f32_s))

;; A valid component of another world: it exports `other:thing/answer`,
;; not twill's protocol or factories.
(component
  (core module $m (func (export "f") (result i32) i32.const 42))
  (core instance $i (instantiate $m))
  (func $f (result u32) (canon lift (core func $i "f")))
  (instance $x (export "answer" (func $f)))
  (export "other:thing/answer@1.0.0" (instance $x))
)

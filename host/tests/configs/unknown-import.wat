;; A component that imports an interface the host does not provide.
(component
  (import "wasi:http/outgoing-handler@0.2.0" (instance $h
    (export "ping" (func (result u32)))
  ))
)

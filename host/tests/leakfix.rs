//! The Python SDK's fixes for componentize-py's leaks
//! (`guest-sdk/python/twill/_leakfix.py`), run for real: they rewrite a
//! stand-in of componentize-py's runtime module
//! (`fixtures/leakfix/pop-list.wat`, with the exports they rewire and the
//! CPython imports they call), and the rewritten module, run by wasmtime,
//! must hand every fast-path buffer to `wit_dylib_dealloc_bytes(cx, ptr,
//! len, 1, defer = 1)`, leave the slow path alone and return what the
//! original returned; and its resource destructor must release the
//! reference the runtime took on the exported object
//! (`PyGILState_Ensure`, `_Py_DecRef(rep)`, `PyGILState_Release`). A second
//! run must change nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use wasmtime::{Caller, Engine, Func, Instance, Module, Store};

fn fixture() -> PathBuf {
    support::repo().join("host/tests/fixtures/leakfix/pop-list.wasm")
}

/// Runs `_leakfix.patch_file(src, dst)`; its return value as printed.
fn patch(src: &Path, dst: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv[1]); from twill import _leakfix; print(_leakfix.patch_file(sys.argv[2], sys.argv[3]))")
        .arg(support::repo().join("guest-sdk/python"))
        .args([src, dst])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The CPython calls the runtime module made, in order.
type Calls = Vec<(&'static str, i32)>;

/// Instantiates the component's core module with recording stand-ins for
/// its CPython imports (`PyGILState_Ensure` returns 42).
fn instantiate(engine: &Engine, component: &Path) -> (Store<Calls>, Instance) {
    let module = Module::new(engine, core_module(&std::fs::read(component).unwrap())).unwrap();
    let mut store = Store::new(engine, Calls::new());
    let record = |store: &mut Store<Calls>, name: &'static str| {
        Func::wrap(&mut *store, move |mut c: Caller<'_, Calls>, arg: i32| {
            c.data_mut().push((name, arg))
        })
    };
    let decref = record(&mut store, "_Py_DecRef");
    let incref = record(&mut store, "_Py_IncRef");
    let release = record(&mut store, "PyGILState_Release");
    let ensure = Func::wrap(&mut store, |mut c: Caller<'_, Calls>| {
        c.data_mut().push(("PyGILState_Ensure", 0));
        42
    });
    let instance = Instance::new(
        &mut store,
        &module,
        &[decref.into(), incref.into(), release.into(), ensure.into()],
    )
    .unwrap();
    (store, instance)
}

/// The component's one core module.
fn core_module(component: &[u8]) -> Vec<u8> {
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        if let wasmparser::Payload::ModuleSection {
            unchecked_range, ..
        } = payload.unwrap()
        {
            return component[unchecked_range].to_vec();
        }
    }
    panic!("no core module");
}

#[test]
fn fast_path_buffers_are_freed_with_the_call_and_a_second_run_changes_nothing() {
    let dir = support::scratch();
    let (once, twice) = (dir.join("once.wasm"), dir.join("twice.wasm"));
    assert_eq!(patch(&fixture(), &once), "True");
    assert_eq!(patch(&once, &twice), "False", "already patched");
    assert_eq!(
        std::fs::read(&once).unwrap(),
        std::fs::read(&twice).unwrap()
    );

    let engine = Engine::default();
    let run = |component: &Path| {
        let (mut store, instance) = instantiate(&engine, component);
        let pop = instance
            .get_typed_func::<(i32, i32, i32), i32>(&mut store, "wit_dylib_pop_list")
            .unwrap();
        let calls = instance
            .get_typed_func::<(), i32>(&mut store, "calls")
            .unwrap();
        let last = instance
            .get_typed_func::<(), (i32, i32, i32, i32)>(&mut store, "last")
            .unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        // The slow path (no buffer handed out): nothing to free.
        assert_eq!(pop.call(&mut store, (5, 0, 64)).unwrap(), 7);
        let after_slow = calls.call(&mut store, ()).unwrap();
        // The fast path: a buffer at 1024, 7 bytes long.
        assert_eq!(pop.call(&mut store, (5, 1, 64)).unwrap(), 7);
        let mut ptr = [0; 4];
        memory.read(&store, 64, &mut ptr).unwrap();
        assert_eq!(
            i32::from_le_bytes(ptr),
            1024,
            "the buffer is still handed out"
        );
        (
            after_slow,
            calls.call(&mut store, ()).unwrap(),
            last.call(&mut store, ()).unwrap(),
        )
    };
    // As componentize-py builds it: nobody frees the buffer.
    assert_eq!(run(&fixture()), (0, 0, (0, 0, 0, 0)));
    // Fixed: freed once, deferred to the end of the call, with its length.
    assert_eq!(run(&once), (0, 1, (1024, 7, 1, 1)));
}

#[test]
fn a_component_without_componentize_py_s_runtime_is_refused_unchanged() {
    let dir = support::scratch();
    let out = dir.join("echo.wasm");
    let err = Command::new("python3")
        .arg("-c")
        .arg("import sys; sys.path.insert(0, sys.argv[1]); from twill import _leakfix; _leakfix.patch_file(sys.argv[2], sys.argv[3])")
        .arg(support::repo().join("guest-sdk/python"))
        .arg(support::echo_wasm())
        .arg(&out)
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("not a componentize-py component"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn the_resource_destructor_releases_the_exported_object() {
    let dir = support::scratch();
    let once = dir.join("once.wasm");
    assert_eq!(patch(&fixture(), &once), "True");
    let engine = Engine::default();
    let dtor = |component: &Path| {
        let (mut store, instance) = instantiate(&engine, component);
        instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "wit_dylib_resource_dtor")
            .unwrap()
            .call(&mut store, (3, 0x1234))
            .unwrap();
        store.into_data()
    };
    // As componentize-py builds it: the reference is never released.
    assert_eq!(dtor(&fixture()), Calls::new());
    // Fixed: released once, holding the GIL.
    assert_eq!(
        dtor(&once),
        vec![
            ("PyGILState_Ensure", 0),
            ("_Py_DecRef", 0x1234),
            ("PyGILState_Release", 42)
        ]
    );
}

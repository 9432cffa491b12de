//! `InterpBackend` as a `Backend`: state by name, input checking, updates applied in place, and
//! the training program's loss equal to the eval program's on the same batch.

mod loop_common;

use std::collections::BTreeMap;

use kiln_runtime::backend::{BackendError, InputTensor, StepRng};
use kiln_runtime::checkpoint::HostTensor;
use kiln_runtime::session::{
    compile_run, copy_params, load_spec, make_backend, Executor, Programs,
};

fn tokens(b: usize, t: usize) -> InputTensor {
    InputTensor::I32 {
        shape: vec![b, t + 1],
        data: (0..b * (t + 1)).map(|i| (i * 7 % 50) as i32).collect(),
    }
}

#[test]
fn state_inputs_and_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &["set.dropout=0.0"]);
    let spec = load_spec(&config).unwrap();
    let compiled = compile_run(&config, &spec, Programs::All).unwrap();
    let mut train =
        make_backend(Executor::Interp, compiled.train.as_ref().unwrap(), 1, None).unwrap();
    let mut eval = make_backend(Executor::Interp, &compiled.eval, 99, None).unwrap();

    // Parameters first, then optimizer state; every parameter has both moments.
    let names: Vec<String> = train.state_shapes().into_iter().map(|(n, _)| n).collect();
    let first_opt = names.iter().position(|n| n.starts_with("opt.")).unwrap();
    assert!(names[first_opt..].iter().all(|n| n.starts_with("opt.")));
    assert_eq!(names.len(), 3 * first_opt);
    let mut shapes = train.input_shapes();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![
            ("lr".to_string(), vec![]),
            ("step".to_string(), vec![]),
            ("tokens".to_string(), vec![2, 9]),
        ]
    );

    // State round trips exactly; bad names and shapes are errors.
    let wte = train.get_state("wte").unwrap();
    let mut changed = wte.clone();
    changed.data[0] = 0.123_456_79;
    train.set_state("wte", &changed).unwrap();
    assert_eq!(train.get_state("wte").unwrap(), changed);
    train.set_state("wte", &wte).unwrap();
    assert!(matches!(
        train.get_state("nope"),
        Err(BackendError::UnknownState(_))
    ));
    let bad = HostTensor {
        shape: vec![1],
        data: vec![0.0],
    };
    assert!(matches!(
        train.set_state("wte", &bad),
        Err(BackendError::StateShape { .. })
    ));

    let mut inputs = BTreeMap::new();
    assert!(matches!(
        train.run(&inputs, StepRng::default()),
        Err(BackendError::MissingInput(_))
    ));
    inputs.insert("tokens".to_string(), tokens(2, 9));
    inputs.insert("lr".to_string(), InputTensor::scalar(0.0));
    inputs.insert("step".to_string(), InputTensor::scalar(1.0));
    assert!(matches!(
        train.run(&inputs, StepRng::default()),
        Err(BackendError::InputShape { .. })
    ));
    inputs.insert("tokens".to_string(), tokens(2, 8));

    // The eval program (its own init) given the train program's parameters computes the same
    // loss on the same batch.
    copy_params(train.as_ref(), eval.as_mut()).unwrap();
    let eval_inputs = BTreeMap::from([("tokens".to_string(), tokens(2, 8))]);
    let e = eval.run(&eval_inputs, StepRng::default()).unwrap()["loss"].data[0];

    // lr = 0: parameters stay bitwise, moments move.
    let before = train.get_state("wte").unwrap();
    let out = train.run(&inputs, StepRng { seed: 1, step: 1 }).unwrap();
    assert_eq!(
        out["loss"].data[0], e,
        "train and eval programs agree on the loss"
    );
    assert!(out["grad_norm"].data[0] > 0.0);
    assert_eq!(train.get_state("wte").unwrap(), before);
    assert!(train
        .get_state("opt.m.wte")
        .unwrap()
        .data
        .iter()
        .any(|&x| x != 0.0));
    // lr > 0: they change.
    inputs.insert("lr".to_string(), InputTensor::scalar(1e-2));
    inputs.insert("step".to_string(), InputTensor::scalar(2.0));
    train.run(&inputs, StepRng { seed: 1, step: 2 }).unwrap();
    assert_ne!(train.get_state("wte").unwrap(), before);
}

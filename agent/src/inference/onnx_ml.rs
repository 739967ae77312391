//! ONNX-ML ops for tract: fast `TreeEnsembleClassifier` (replacing tract's), and
//! `TreeEnsembleRegressor` and `LabelEncoder` (absent from tract 0.23), registered with
//! tract's op registry so whole scikit-learn graphs (IsolationForest's glue included) load.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::tree::{Aggregate, Classifier, Forest, Mode, PostTransform, Regressor, TreeAttrs};

/// Adds (or replaces) the three ops in a registry.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("TreeEnsembleClassifier", parse_classifier);
    reg.insert("TreeEnsembleRegressor", parse_regressor);
    reg.insert("LabelEncoder", parse_label_encoder);
}

/// Float attribute that may come as `<name>` (floats) or `<name>_as_tensor` (doubles).
fn floats(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Option<Vec<f32>>> {
    if let Some(v) = node.get_attr_opt_slice::<f32>(name)? {
        return Ok(Some(v.to_vec()));
    }
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(&format!("{name}_as_tensor"))? {
        Some(t) => {
            let t = ctx.load_tensor(t)?;
            let t = t.cast_to::<f32>()?;
            Ok(Some(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
        }
        None => Ok(None),
    }
}

fn tree_attrs(ctx: &ParsingContext, node: &NodeProto, leaf: &str) -> TractResult<TreeAttrs> {
    let ints = |n: &str| -> TractResult<Vec<i64>> { Ok(node.get_attr_slice::<i64>(n)?.to_vec()) };
    let modes = node
        .get_attr_vec::<&str>("nodes_modes")?
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format_err!("{}: {e}", node.name))?;
    Ok(TreeAttrs {
        tree_ids: ints("nodes_treeids")?,
        node_ids: ints("nodes_nodeids")?,
        feature_ids: ints("nodes_featureids")?,
        modes,
        values: floats(ctx, node, "nodes_values")?
            .ok_or_else(|| format_err!("{}: no nodes_values", node.name))?,
        true_ids: ints("nodes_truenodeids")?,
        false_ids: ints("nodes_falsenodeids")?,
        missing_tracks_true: node
            .get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")?
            .map(|v| v.iter().map(|x| *x != 0).collect())
            .unwrap_or_default(),
        leaf_tree_ids: ints(&format!("{leaf}_treeids"))?,
        leaf_node_ids: ints(&format!("{leaf}_nodeids"))?,
        leaf_target_ids: ints(&format!("{leaf}_ids"))?,
        leaf_weights: floats(ctx, node, &format!("{leaf}_weights"))?
            .ok_or_else(|| format_err!("{}: no {leaf}_weights", node.name))?,
    })
}

fn post_transform(node: &NodeProto) -> TractResult<PostTransform> {
    PostTransform::parse(
        node.get_attr_opt::<&str>("post_transform")?
            .unwrap_or("NONE"),
    )
    .map_err(|e| format_err!("{e}"))
}

fn parse_regressor(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let n_targets: i64 = node.get_attr_opt("n_targets")?.unwrap_or(1);
    ensure!(n_targets >= 1, "{}: n_targets {n_targets}", node.name);
    let attrs = tree_attrs(ctx, node, "target")?;
    let forest =
        Forest::build(&attrs, n_targets as usize).map_err(|e| format_err!("{}: {e}", node.name))?;
    let agg = Aggregate::parse(
        node.get_attr_opt::<&str>("aggregate_function")?
            .unwrap_or("SUM"),
    )
    .map_err(|e| format_err!("{e}"))?;
    let base = floats(ctx, node, "base_values")?.unwrap_or_default();
    let r = Regressor::new(forest, agg, base, post_transform(node)?)
        .map_err(|e| format_err!("{}: {e}", node.name))?;
    Ok((
        expand(TreeExpansion(TreeOp {
            model: Arc::new(TreeModel::Regressor(r)),
        })),
        vec![],
    ))
}

fn parse_classifier(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node
        .get_attr_opt_vec::<&str>("classlabels_strings")?
        .is_some()
    {
        bail!(
            "{}: string class labels are not supported; train with integer labels",
            node.name
        );
    }
    let labels = node.get_attr_slice::<i64>("classlabels_int64s")?.to_vec();
    let attrs = tree_attrs(ctx, node, "class")?;
    let forest =
        Forest::build(&attrs, labels.len()).map_err(|e| format_err!("{}: {e}", node.name))?;
    let base = floats(ctx, node, "base_values")?.unwrap_or_default();
    let c = Classifier::new(forest, labels, base, post_transform(node)?)
        .map_err(|e| format_err!("{}: {e}", node.name))?;
    Ok((
        expand(TreeExpansion(TreeOp {
            model: Arc::new(TreeModel::Classifier(c)),
        })),
        vec![],
    ))
}

#[derive(Debug)]
enum TreeModel {
    Regressor(Regressor),
    Classifier(Classifier),
}

impl TreeModel {
    fn forest(&self) -> &Forest {
        match self {
            TreeModel::Regressor(r) => &r.forest,
            TreeModel::Classifier(c) => &c.forest,
        }
    }
}

/// The typed op evaluating a tree ensemble.
#[derive(Debug, Clone)]
struct TreeOp {
    model: Arc<TreeModel>,
}

impl PartialEq for TreeOp {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.model, &o.model)
    }
}
impl Eq for TreeOp {}

impl Op for TreeOp {
    fn name(&self) -> StaticName {
        match *self.model {
            TreeModel::Regressor(_) => "EdgeTreeEnsembleRegressor".into(),
            TreeModel::Classifier(_) => "EdgeTreeEnsembleClassifier".into(),
        }
    }
    op_as_typed_op!();
}

impl EvalOp for TreeOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let x = x.cast_to::<f32>()?;
        let (n, f) = match x.rank() {
            1 => (1, x.shape()[0]),
            2 => (x.shape()[0], x.shape()[1]),
            r => bail!("tree ensemble input must be [N, F], got rank {r}"),
        };
        ensure!(
            f > self.model.forest().max_feature,
            "tree ensemble uses feature {} but the input has {f}",
            self.model.forest().max_feature
        );
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        match &*self.model {
            TreeModel::Regressor(r) => {
                let k = r.forest.n_out;
                let mut out = vec![0f32; n * k];
                r.eval(xs, f, &mut out);
                Ok(tvec!(Tensor::from_shape(&[n, k], &out)?.into_tvalue()))
            }
            TreeModel::Classifier(c) => {
                let k = c.labels.len();
                let mut labels = vec![0i64; n];
                let mut scores = vec![0f32; n * k];
                c.eval(xs, f, &mut labels, &mut scores);
                Ok(tvec!(
                    Tensor::from_shape(&[n], &labels)?.into_tvalue(),
                    Tensor::from_shape(&[n, k], &scores)?.into_tvalue()
                ))
            }
        }
    }
}

impl TypedOp for TreeOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n: TDim = if inputs[0].rank() == 2 {
            inputs[0].shape[0].clone()
        } else {
            1.into()
        };
        Ok(match &*self.model {
            TreeModel::Regressor(r) => tvec!(f32::fact([n, r.forest.n_out.to_dim()])),
            TreeModel::Classifier(c) => tvec!(
                i64::fact([n.clone()]),
                f32::fact([n, c.labels.len().to_dim()])
            ),
        })
    }
}

#[derive(Debug, Clone)]
struct TreeExpansion(TreeOp);

impl Expansion for TreeExpansion {
    fn name(&self) -> StaticName {
        self.0.name()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(match *self.0.model {
            TreeModel::Regressor(_) => 1,
            TreeModel::Classifier(_) => 2,
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        s.equals(&inputs[0].rank, 2)?;
        match &*self.0.model {
            TreeModel::Regressor(r) => {
                check_output_arity(outputs, 1)?;
                s.equals(&outputs[0].datum_type, DatumType::F32)?;
                s.equals(&outputs[0].rank, 2)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[0].shape[1], r.forest.n_out.to_dim())?;
            }
            TreeModel::Classifier(c) => {
                check_output_arity(outputs, 2)?;
                s.equals(&outputs[0].datum_type, DatumType::I64)?;
                s.equals(&outputs[1].datum_type, DatumType::F32)?;
                s.equals(&outputs[0].rank, 1)?;
                s.equals(&outputs[1].rank, 2)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
                s.equals(&outputs[1].shape[1], c.labels.len().to_dim())?;
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

// ---------------------------------------------------------------------------------------
// LabelEncoder (ai.onnx.ml v1/v2): int64 or float keys to float or int64 values.

#[derive(Debug, Clone, PartialEq)]
enum Values {
    F32(Vec<f32>, f32),
    I64(Vec<i64>, i64),
}

#[derive(Debug)]
struct Encoder {
    /// Key -> index into the values; a dense table when keys are small non-negative integers.
    dense: Option<Vec<u32>>,
    sparse: HashMap<u64, u32>,
    float_keys: bool,
    values: Values,
}

const NONE: u32 = u32::MAX;

impl Encoder {
    fn lookup(&self, key_bits: u64, key_i64: i64) -> Option<usize> {
        if let Some(d) = &self.dense {
            return usize::try_from(key_i64)
                .ok()
                .and_then(|k| d.get(k))
                .filter(|&&i| i != NONE)
                .map(|&i| i as usize);
        }
        self.sparse.get(&key_bits).map(|&i| i as usize)
    }
}

#[derive(Debug, Clone)]
struct LabelEncoderOp(Arc<Encoder>);

impl PartialEq for LabelEncoderOp {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}
impl Eq for LabelEncoderOp {}

fn parse_label_encoder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ikeys = node.get_attr_opt_slice::<i64>("keys_int64s")?;
    let fkeys = node.get_attr_opt_slice::<f32>("keys_floats")?;
    let (keys_bits, keys_i64, float_keys): (Vec<u64>, Vec<i64>, bool) = match (ikeys, fkeys) {
        (Some(k), None) => (k.iter().map(|v| *v as u64).collect(), k.to_vec(), false),
        (None, Some(k)) => (
            k.iter().map(|v| u64::from(v.to_bits())).collect(),
            vec![],
            true,
        ),
        _ => bail!(
            "{}: LabelEncoder needs keys_int64s or keys_floats (string keys are not supported)",
            node.name
        ),
    };
    let values = if let Some(v) = node.get_attr_opt_slice::<f32>("values_floats")? {
        Values::F32(
            v.to_vec(),
            node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0),
        )
    } else if let Some(v) = node.get_attr_opt_slice::<i64>("values_int64s")? {
        Values::I64(
            v.to_vec(),
            node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1),
        )
    } else {
        bail!("{}: LabelEncoder needs values_floats or values_int64s (string values are not supported)", node.name)
    };
    let n_values = match &values {
        Values::F32(v, _) => v.len(),
        Values::I64(v, _) => v.len(),
    };
    ensure!(
        n_values == keys_bits.len(),
        "{}: {} keys but {n_values} values",
        node.name,
        keys_bits.len()
    );
    let dense = (!float_keys && keys_i64.iter().all(|k| (0..1_000_000).contains(k))).then(|| {
        let max = keys_i64.iter().copied().max().unwrap_or(0) as usize;
        let mut d = vec![NONE; max + 1];
        for (i, k) in keys_i64.iter().enumerate().rev() {
            d[*k as usize] = i as u32; // first duplicate wins
        }
        d
    });
    let mut sparse = HashMap::new();
    if dense.is_none() {
        for (i, k) in keys_bits.iter().enumerate() {
            sparse.entry(*k).or_insert(i as u32);
        }
    }
    let enc = Encoder {
        dense,
        sparse,
        float_keys,
        values,
    };
    Ok((
        expand(LabelEncoderExpansion(LabelEncoderOp(Arc::new(enc)))),
        vec![],
    ))
}

impl Op for LabelEncoderOp {
    fn name(&self) -> StaticName {
        "EdgeLabelEncoder".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LabelEncoderOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let enc = &*self.0;
        let idx: Vec<Option<usize>> = if enc.float_keys {
            let x = x.cast_to::<f32>()?;
            x.try_as_plain_ram()?
                .as_slice::<f32>()?
                .iter()
                .map(|v| enc.lookup(u64::from(v.to_bits()), 0))
                .collect()
        } else {
            let x = x.cast_to::<i64>()?;
            x.try_as_plain_ram()?
                .as_slice::<i64>()?
                .iter()
                .map(|v| enc.lookup(*v as u64, *v))
                .collect()
        };
        let out = match &enc.values {
            Values::F32(v, d) => Tensor::from_shape(
                x.shape(),
                &idx.iter()
                    .map(|i| i.map_or(*d, |i| v[i]))
                    .collect::<Vec<_>>(),
            )?,
            Values::I64(v, d) => Tensor::from_shape(
                x.shape(),
                &idx.iter()
                    .map(|i| i.map_or(*d, |i| v[i]))
                    .collect::<Vec<_>>(),
            )?,
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl LabelEncoderOp {
    fn out_type(&self) -> DatumType {
        match self.0.values {
            Values::F32(..) => DatumType::F32,
            Values::I64(..) => DatumType::I64,
        }
    }
}

impl TypedOp for LabelEncoderOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_type().fact(inputs[0].shape.iter())))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        AxesMapping::natural(inputs, outputs)
    }

    fn change_axes(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        _io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        Ok(Some(AxisChangeConsequence::new(model, node, None, change)))
    }
}

#[derive(Debug, Clone)]
struct LabelEncoderExpansion(LabelEncoderOp);

impl Expansion for LabelEncoderExpansion {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.0.out_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

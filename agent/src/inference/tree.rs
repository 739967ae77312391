//! Tree-ensemble evaluation with onnxruntime's semantics (`TreeEnsembleRegressor` and
//! `TreeEnsembleClassifier`, ai.onnx.ml), as a flat array of nodes walked root to leaf:
//! O(depth) per tree and row. tract 0.23 lacks the regressor, mis-decodes `BRANCH_GTE` and
//! walks leaves quadratically; this module replaces both (wired in by `onnx_ml.rs`).
//!
//! Semantics followed (onnxruntime `tree_ensemble_aggregator.h`, `ml_common.h`): a tree's root
//! is the first node of each run of `nodes_treeids`; `cond = cmp(x, threshold) || (tracks_true
//! && x is NaN)` picks the true child (a NaN compares false, except `BRANCH_NEQ`); leaf weights
//! aggregate per target (SUM/AVERAGE/MIN/MAX); base values, then the post transform (NONE,
//! LOGISTIC, SOFTMAX, SOFTMAX_ZERO, PROBIT), including the two-class special cases.

use std::collections::HashMap;

/// Why an ensemble's ONNX attributes were refused: the node tables are malformed or name
/// something this evaluator does not know. The ONNX-ML op parser prefixes the node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("unknown node mode `{0}`")]
    UnknownMode(String),
    #[error("unknown aggregate_function `{0}`")]
    UnknownAggregate(String),
    #[error("unknown post_transform `{0}`")]
    UnknownPostTransform(String),
    #[error("{name} has {len} entries, nodes_nodeids has {nodes}")]
    LengthMismatch {
        name: &'static str,
        len: usize,
        nodes: usize,
    },
    #[error("nodes_missing_value_tracks_true has the wrong length")]
    MissingTracksLength,
    #[error("leaf attributes (treeids/nodeids/ids/weights) differ in length")]
    LeafLengths,
    #[error("the ensemble has no nodes")]
    NoNodes,
    #[error("node ({tree}, {node}) appears twice")]
    DuplicateNode { tree: i64, node: i64 },
    #[error("a weight refers to node {0:?}, which does not exist")]
    WeightWithoutNode((i64, i64)),
    #[error("weight target/class id {target} is outside 0..{n_out}")]
    TargetOutOfRange { target: i64, n_out: usize },
    #[error("leaf ({tree}, {node}) has no weight")]
    LeafWithoutWeight { tree: i64, node: i64 },
    #[error("node ({tree}, {node}) points to missing child {child}")]
    MissingChild { tree: i64, node: i64, child: i64 },
    #[error("negative feature id {0}")]
    NegativeFeature(i64),
    #[error("a tree has a cycle or shares a node with another path")]
    Cycle,
    #[error("base_values has {got} entries for {targets} targets")]
    RegressorBaseValues { got: usize, targets: usize },
    #[error("{0} class label(s): a classifier needs at least 2")]
    TooFewClasses(usize),
    #[error("class count mismatch")]
    ClassCountMismatch,
    #[error("base_values has {got} entries for {classes} classes")]
    ClassifierBaseValues { got: usize, classes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, TreeError> {
        Ok(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            other => return Err(TreeError::UnknownMode(other.to_string())),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub fn parse(s: &str) -> Result<Aggregate, TreeError> {
        Ok(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => return Err(TreeError::UnknownAggregate(other.to_string())),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    pub fn parse(s: &str) -> Result<PostTransform, TreeError> {
        Ok(match s {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => return Err(TreeError::UnknownPostTransform(other.to_string())),
        })
    }
}

/// The node arrays of a tree ensemble, as the ONNX attributes give them.
#[derive(Debug, Clone, Default)]
pub struct TreeAttrs {
    pub tree_ids: Vec<i64>,
    pub node_ids: Vec<i64>,
    pub feature_ids: Vec<i64>,
    pub modes: Vec<Mode>,
    pub values: Vec<f32>,
    pub true_ids: Vec<i64>,
    pub false_ids: Vec<i64>,
    pub missing_tracks_true: Vec<bool>,
    /// Leaf weights: (tree id, node id, target or class id, weight).
    pub leaf_tree_ids: Vec<i64>,
    pub leaf_node_ids: Vec<i64>,
    pub leaf_target_ids: Vec<i64>,
    pub leaf_weights: Vec<f32>,
}

/// One node. For a leaf, `t..t+f` is its range in `Forest::weights`.
#[derive(Debug, Clone, Copy)]
struct Node {
    feature: u32,
    threshold: f32,
    t: u32,
    f: u32,
    mode: Mode,
    nan_true: bool,
}

/// A validated, flattened ensemble.
#[derive(Debug)]
pub struct Forest {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    weights: Vec<(u32, f32)>,
    /// Number of targets (regressor) or classes (classifier).
    pub n_out: usize,
    /// Largest feature index used.
    pub max_feature: usize,
    /// Every branch is `BRANCH_LEQ` without NaN tracking (scikit-learn): the fast path.
    all_leq: bool,
    /// Distinct target/class ids among leaf weights.
    distinct_targets: usize,
    all_weights_positive: bool,
}

impl Forest {
    /// Builds and validates. `n_out` is the number of targets or classes.
    pub fn build(a: &TreeAttrs, n_out: usize) -> Result<Forest, TreeError> {
        let n = a.node_ids.len();
        for (name, len) in [
            ("nodes_treeids", a.tree_ids.len()),
            ("nodes_featureids", a.feature_ids.len()),
            ("nodes_modes", a.modes.len()),
            ("nodes_values", a.values.len()),
            ("nodes_truenodeids", a.true_ids.len()),
            ("nodes_falsenodeids", a.false_ids.len()),
        ] {
            if len != n {
                return Err(TreeError::LengthMismatch {
                    name,
                    len,
                    nodes: n,
                });
            }
        }
        if !a.missing_tracks_true.is_empty() && a.missing_tracks_true.len() != n {
            return Err(TreeError::MissingTracksLength);
        }
        let m = a.leaf_weights.len();
        if a.leaf_tree_ids.len() != m || a.leaf_node_ids.len() != m || a.leaf_target_ids.len() != m
        {
            return Err(TreeError::LeafLengths);
        }
        if n == 0 {
            return Err(TreeError::NoNodes);
        }
        let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
        let mut roots = Vec::new();
        for i in 0..n {
            if index.insert((a.tree_ids[i], a.node_ids[i]), i).is_some() {
                return Err(TreeError::DuplicateNode {
                    tree: a.tree_ids[i],
                    node: a.node_ids[i],
                });
            }
            if i == 0 || a.tree_ids[i] != a.tree_ids[i - 1] {
                roots.push(i as u32);
            }
        }
        // Leaf weights, grouped per leaf in (tree, node) order.
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by_key(|&j| (a.leaf_tree_ids[j], a.leaf_node_ids[j]));
        let mut leaf_ranges: HashMap<usize, (u32, u32)> = HashMap::new();
        let mut weights = Vec::with_capacity(m);
        let mut targets = std::collections::HashSet::new();
        for j in order {
            let key = (a.leaf_tree_ids[j], a.leaf_node_ids[j]);
            let Some(&node) = index.get(&key) else {
                return Err(TreeError::WeightWithoutNode(key));
            };
            if a.modes[node] != Mode::Leaf {
                continue; // onnxruntime ignores weights on branch nodes
            }
            let t = a.leaf_target_ids[j];
            if t < 0 || t as usize >= n_out {
                return Err(TreeError::TargetOutOfRange { target: t, n_out });
            }
            targets.insert(t);
            let e = leaf_ranges.entry(node).or_insert((weights.len() as u32, 0));
            e.1 += 1;
            weights.push((t as u32, a.leaf_weights[j]));
        }
        let mut nodes = Vec::with_capacity(n);
        let mut max_feature = 0usize;
        for i in 0..n {
            let mode = a.modes[i];
            let node = if mode == Mode::Leaf {
                let Some(&(start, len)) = leaf_ranges.get(&i) else {
                    return Err(TreeError::LeafWithoutWeight {
                        tree: a.tree_ids[i],
                        node: a.node_ids[i],
                    });
                };
                Node {
                    feature: 0,
                    threshold: 0.0,
                    t: start,
                    f: len,
                    mode,
                    nan_true: false,
                }
            } else {
                let child = |id: i64| {
                    index.get(&(a.tree_ids[i], id)).map(|&c| c as u32).ok_or(
                        TreeError::MissingChild {
                            tree: a.tree_ids[i],
                            node: a.node_ids[i],
                            child: id,
                        },
                    )
                };
                let f = a.feature_ids[i];
                if f < 0 {
                    return Err(TreeError::NegativeFeature(f));
                }
                max_feature = max_feature.max(f as usize);
                Node {
                    feature: f as u32,
                    threshold: a.values[i],
                    t: child(a.true_ids[i])?,
                    f: child(a.false_ids[i])?,
                    mode,
                    nan_true: a.missing_tracks_true.get(i).copied().unwrap_or(false),
                }
            };
            nodes.push(node);
        }
        let forest = Forest {
            all_leq: nodes
                .iter()
                .all(|n| n.mode == Mode::Leaf || (n.mode == Mode::Leq && !n.nan_true)),
            distinct_targets: targets.len(),
            all_weights_positive: weights.iter().all(|w| w.1 >= 0.0),
            nodes,
            roots,
            weights,
            n_out,
            max_feature,
        };
        forest.check_acyclic()?;
        Ok(forest)
    }

    /// A malformed (or malicious) model must not send the walker into a loop.
    fn check_acyclic(&self) -> Result<(), TreeError> {
        let mut seen = vec![false; self.nodes.len()];
        for &r in &self.roots {
            let mut stack = vec![r];
            while let Some(i) = stack.pop() {
                let i = i as usize;
                if seen[i] {
                    return Err(TreeError::Cycle);
                }
                seen[i] = true;
                let n = self.nodes[i];
                if n.mode != Mode::Leaf {
                    stack.push(n.t);
                    stack.push(n.f);
                }
            }
        }
        Ok(())
    }

    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    #[inline]
    fn leaf(&self, root: u32, x: &[f32]) -> &Node {
        let mut n = &self.nodes[root as usize];
        if self.all_leq {
            while n.mode != Mode::Leaf {
                // NaN <= t is false: the false branch, as in onnxruntime.
                n = &self.nodes[if x[n.feature as usize] <= n.threshold {
                    n.t
                } else {
                    n.f
                } as usize];
            }
            return n;
        }
        while n.mode != Mode::Leaf {
            let v = x[n.feature as usize];
            let cmp = match n.mode {
                Mode::Leq => v <= n.threshold,
                Mode::Lt => v < n.threshold,
                Mode::Gte => v >= n.threshold,
                Mode::Gt => v > n.threshold,
                Mode::Eq => v == n.threshold,
                Mode::Neq => v != n.threshold,
                Mode::Leaf => unreachable!(),
            };
            let go = cmp || (n.nan_true && v.is_nan());
            n = &self.nodes[if go { n.t } else { n.f } as usize];
        }
        n
    }

    /// Aggregated raw scores of one row: (score, has_score) per target.
    fn raw(&self, x: &[f32], agg: Aggregate, scores: &mut [f64], has: &mut [bool]) {
        scores.iter_mut().for_each(|s| *s = 0.0);
        has.iter_mut().for_each(|h| *h = false);
        for &r in &self.roots {
            let leaf = self.leaf(r, x);
            for &(t, w) in &self.weights[leaf.t as usize..(leaf.t + leaf.f) as usize] {
                let (s, h) = (&mut scores[t as usize], &mut has[t as usize]);
                let w = f64::from(w);
                match agg {
                    Aggregate::Sum | Aggregate::Average => *s += w,
                    Aggregate::Min => *s = if !*h || w < *s { w } else { *s },
                    Aggregate::Max => *s = if !*h || w > *s { w } else { *s },
                }
                *h = true;
            }
        }
    }
}

/// A regressor: `Y [N, n_targets]`.
#[derive(Debug)]
pub struct Regressor {
    pub forest: Forest,
    pub aggregate: Aggregate,
    pub base: Vec<f32>,
    pub post: PostTransform,
}

impl Regressor {
    pub fn new(
        forest: Forest,
        aggregate: Aggregate,
        base: Vec<f32>,
        post: PostTransform,
    ) -> Result<Regressor, TreeError> {
        if !base.is_empty() && base.len() != 1 && base.len() != forest.n_out {
            return Err(TreeError::RegressorBaseValues {
                got: base.len(),
                targets: forest.n_out,
            });
        }
        Ok(Regressor {
            forest,
            aggregate,
            base,
            post,
        })
    }

    /// Evaluates `rows` rows of `x` (row-major, `f` features each) into `out` (`rows * n_out`).
    pub fn eval(&self, x: &[f32], f: usize, out: &mut [f32]) {
        let k = self.forest.n_out;
        let mut s = vec![0f64; k];
        let mut h = vec![false; k];
        for (row, o) in x.chunks_exact(f).zip(out.chunks_exact_mut(k)) {
            self.forest.raw(row, self.aggregate, &mut s, &mut h);
            let n_trees = self.forest.n_trees() as f64;
            if k == 1 {
                let origin = if self.base.len() == 1 {
                    f64::from(self.base[0])
                } else {
                    0.0
                };
                let v = match self.aggregate {
                    Aggregate::Sum => s[0] + origin,
                    Aggregate::Average => s[0] / n_trees + origin,
                    Aggregate::Min | Aggregate::Max => {
                        if h[0] {
                            s[0] + origin
                        } else {
                            origin
                        }
                    }
                };
                // onnxruntime applies only PROBIT to a single target.
                o[0] = if self.post == PostTransform::Probit {
                    probit(v as f32)
                } else {
                    v as f32
                };
            } else {
                let use_base = self.base.len() == k;
                let mut v: Vec<f32> = (0..k)
                    .map(|j| {
                        let b = if use_base {
                            f64::from(self.base[j])
                        } else {
                            0.0
                        };
                        (match self.aggregate {
                            Aggregate::Sum => s[j] + b,
                            Aggregate::Average => s[j] / n_trees + b,
                            Aggregate::Min | Aggregate::Max => b + if h[j] { s[j] } else { 0.0 },
                        }) as f32
                    })
                    .collect();
                transform(&mut v, self.post);
                o.copy_from_slice(&v);
            }
        }
    }
}

/// A classifier: labels `[N]` and scores `[N, n_classes]`.
#[derive(Debug)]
pub struct Classifier {
    pub forest: Forest,
    pub labels: Vec<i64>,
    pub base: Vec<f32>,
    pub post: PostTransform,
}

impl Classifier {
    pub fn new(
        forest: Forest,
        labels: Vec<i64>,
        base: Vec<f32>,
        post: PostTransform,
    ) -> Result<Classifier, TreeError> {
        if labels.len() < 2 {
            return Err(TreeError::TooFewClasses(labels.len()));
        }
        if forest.n_out != labels.len() {
            return Err(TreeError::ClassCountMismatch);
        }
        if !base.is_empty() && base.len() > labels.len() {
            return Err(TreeError::ClassifierBaseValues {
                got: base.len(),
                classes: labels.len(),
            });
        }
        Ok(Classifier {
            forest,
            labels,
            base,
            post,
        })
    }

    fn binary_case(&self) -> bool {
        self.labels.len() == 2 && self.forest.distinct_targets == 1
    }

    /// Label for the two-class rule; sets how to fill the second score (onnxruntime's
    /// `add_second_class`).
    fn binary_label(&self, pos: f32, add_second: &mut i32) -> i64 {
        if self.binary_case() {
            if self.forest.all_weights_positive {
                *add_second = if pos > 0.5 { 0 } else { 1 };
                if pos > 0.5 {
                    self.labels[1]
                } else {
                    self.labels[0]
                }
            } else {
                *add_second = if pos > 0.0 { 2 } else { 3 };
                if pos > 0.0 {
                    self.labels[1]
                } else {
                    self.labels[0]
                }
            }
        } else if pos > 0.0 {
            1
        } else {
            0
        }
    }

    pub fn eval(&self, x: &[f32], f: usize, labels_out: &mut [i64], scores_out: &mut [f32]) {
        let c = self.labels.len();
        let mut s = vec![0f64; c];
        let mut h = vec![false; c];
        for ((row, lab), z) in x
            .chunks_exact(f)
            .zip(labels_out.iter_mut())
            .zip(scores_out.chunks_exact_mut(c))
        {
            self.forest.raw(row, Aggregate::Sum, &mut s, &mut h);
            let mut sc: Vec<f32> = s.iter().map(|v| *v as f32).collect();
            let mut add_second = -1i32;
            if c > 2 {
                for (k, b) in self.base.iter().enumerate() {
                    if h[k] {
                        sc[k] += b;
                    } else {
                        sc[k] = *b;
                        h[k] = true;
                    }
                }
                let mut best: Option<usize> = None;
                for k in 0..c {
                    if h[k] && best.is_none_or(|b| sc[k] > sc[b]) {
                        best = Some(k);
                    }
                }
                *lab = self.labels[best.unwrap_or(0)];
            } else {
                let mut keep_second = true;
                if self.base.len() == 2 {
                    if h[1] {
                        sc[1] = self.base[1] + sc[0];
                        sc[0] = -sc[1];
                        h[1] = true;
                    } else {
                        sc[1] += self.base[1];
                        sc[0] += self.base[0];
                    }
                } else if self.base.len() == 1 {
                    sc[0] += self.base[0];
                    keep_second = h[1];
                } else {
                    add_second = 3;
                    keep_second = h[1];
                }
                if !keep_second {
                    sc.pop();
                }
                let pos = if sc.len() == 2 && h[1] {
                    sc[1]
                } else if h[0] {
                    sc[0]
                } else {
                    0.0
                };
                *lab = self.binary_label(pos, &mut add_second);
            }
            write_scores(&mut sc, self.post, add_second);
            z.iter_mut().for_each(|v| *v = 0.0);
            for (zi, v) in z.iter_mut().zip(&sc) {
                *zi = *v;
            }
        }
    }
}

fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - e
    } else {
        e
    }
}

/// onnxruntime's erfinv approximation (Winitzki, a = 0.147), in f32 like onnxruntime —
/// including its truncated π, so results match it rather than the exact function.
#[allow(clippy::approx_constant)]
fn probit(v: f32) -> f32 {
    let x = 2.0 * v - 1.0;
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let l = x.ln();
    let a = 2.0 / (3.14159f32 * 0.147) + 0.5 * l;
    let b = 1.0 / 0.147 * l;
    std::f32::consts::SQRT_2 * sgn * (-a + (a * a - b).sqrt()).sqrt()
}

fn transform(v: &mut [f32], post: PostTransform) {
    match post {
        PostTransform::None => {}
        PostTransform::Probit => v.iter_mut().for_each(|x| *x = probit(*x)),
        PostTransform::Logistic => v.iter_mut().for_each(|x| *x = logistic(*x)),
        PostTransform::Softmax => {
            let m = v.iter().copied().fold(-f32::MAX, f32::max);
            let mut sum = 0.0;
            for x in v.iter_mut() {
                *x = (*x - m).exp();
                sum += *x;
            }
            v.iter_mut().for_each(|x| *x /= sum);
        }
        PostTransform::SoftmaxZero => {
            let m = v.iter().copied().fold(-f32::MAX, f32::max);
            let e = (-m).exp();
            let mut sum = 0.0;
            for x in v.iter_mut() {
                if *x > 1e-7 || *x < -1e-7 {
                    *x = (*x - m).exp();
                    sum += *x;
                } else {
                    *x *= e;
                }
            }
            v.iter_mut().for_each(|x| *x /= sum);
        }
    }
}

/// onnxruntime's `write_scores`: the transform, or the two-class completion of one score.
fn write_scores(s: &mut Vec<f32>, post: PostTransform, add_second: i32) {
    if s.len() >= 2 {
        transform(s, post);
    } else if s.len() == 1 {
        if post == PostTransform::Probit {
            s[0] = probit(s[0]);
            return;
        }
        let v = s[0];
        match add_second {
            0 | 1 => *s = vec![1.0 - v, v],
            2 | 3 if post == PostTransform::Logistic => *s = vec![logistic(-v), logistic(v)],
            2 => *s = vec![-v, v],
            3 => *s = vec![v, -v],
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One stump per tree: x[f] <mode> thr ? left leaf : right leaf.
    fn stumps(trees: &[(usize, Mode, f32, f32, f32)], target: i64) -> TreeAttrs {
        let mut a = TreeAttrs::default();
        for (t, &(feat, mode, thr, wl, wr)) in trees.iter().enumerate() {
            let t = t as i64;
            for (node, m, f, v, tr, fa) in [
                (0, mode, feat as i64, thr, 1, 2),
                (1, Mode::Leaf, 0, 0.0, 0, 0),
                (2, Mode::Leaf, 0, 0.0, 0, 0),
            ] {
                a.tree_ids.push(t);
                a.node_ids.push(node);
                a.modes.push(m);
                a.feature_ids.push(f);
                a.values.push(v);
                a.true_ids.push(tr);
                a.false_ids.push(fa);
            }
            for (node, w) in [(1, wl), (2, wr)] {
                a.leaf_tree_ids.push(t);
                a.leaf_node_ids.push(node);
                a.leaf_target_ids.push(target);
                a.leaf_weights.push(w);
            }
        }
        a
    }

    #[test]
    fn every_comparison_mode_and_nan() {
        for (mode, x, want) in [
            (Mode::Leq, 1.0, 10.0),
            (Mode::Leq, 1.5, 20.0),
            (Mode::Lt, 1.0, 20.0),
            (Mode::Gte, 1.0, 10.0), // tract 0.23 decodes GTE as a leaf
            (Mode::Gte, 0.5, 20.0),
            (Mode::Gt, 1.0, 20.0),
            (Mode::Eq, 1.0, 10.0),
            (Mode::Neq, 1.0, 20.0),
            (Mode::Leq, f32::NAN, 20.0),
            (Mode::Neq, f32::NAN, 10.0), // NaN != t is true
        ] {
            let f = Forest::build(&stumps(&[(0, mode, 1.0, 10.0, 20.0)], 0), 1).unwrap();
            let r = Regressor::new(f, Aggregate::Sum, vec![], PostTransform::None).unwrap();
            let mut out = [0f32];
            r.eval(&[x], 1, &mut out);
            assert_eq!(out[0], want, "{mode:?} x={x}");
        }
        let mut a = stumps(&[(0, Mode::Lt, 1.0, 10.0, 20.0)], 0);
        a.missing_tracks_true = vec![true, false, false];
        let r = Regressor::new(
            Forest::build(&a, 1).unwrap(),
            Aggregate::Sum,
            vec![],
            PostTransform::None,
        )
        .unwrap();
        let mut out = [0f32];
        r.eval(&[f32::NAN], 1, &mut out);
        assert_eq!(
            out[0], 10.0,
            "missing_value_tracks_true sends NaN to the true branch"
        );
    }

    #[test]
    fn aggregates_and_base_values() {
        let a = stumps(
            &[
                (0, Mode::Leq, 0.0, 1.0, 2.0),
                (0, Mode::Leq, 0.0, 3.0, 5.0),
                (0, Mode::Leq, 0.0, -1.0, 7.0),
            ],
            0,
        );
        let run = |agg, base: Vec<f32>| {
            let r = Regressor::new(
                Forest::build(&a, 1).unwrap(),
                agg,
                base,
                PostTransform::None,
            )
            .unwrap();
            let mut out = [0f32; 2];
            r.eval(&[-1.0, 1.0], 1, &mut out);
            out
        };
        assert_eq!(run(Aggregate::Sum, vec![0.5]), [3.5, 14.5]);
        assert_eq!(run(Aggregate::Average, vec![]), [1.0, 14.0 / 3.0]);
        assert_eq!(run(Aggregate::Min, vec![]), [-1.0, 2.0]);
        assert_eq!(run(Aggregate::Max, vec![1.0]), [4.0, 8.0]);
    }

    #[test]
    fn binary_classifier_like_skl2onnx_random_forest() {
        // Only class-1 probabilities, class id 0, no base: scores [1-p, p], label p > 0.5.
        let a = stumps(
            &[(0, Mode::Leq, 0.0, 0.2, 0.9), (1, Mode::Leq, 0.0, 0.1, 0.7)],
            0,
        );
        let c = Classifier::new(
            Forest::build(&a, 2).unwrap(),
            vec![10, 20],
            vec![],
            PostTransform::None,
        )
        .unwrap();
        let (mut l, mut s) = ([0i64; 2], [0f32; 4]);
        // Weights as RandomForest exports them already include 1/n_trees: sum = p.
        c.eval(&[-1.0, -1.0, 1.0, 1.0], 2, &mut l, &mut s);
        assert_eq!(l, [10, 20]);
        assert!(
            (s[0] - (1.0 - 0.3)).abs() < 1e-6 && (s[1] - 0.3).abs() < 1e-6,
            "{s:?}"
        );
        assert!((s[3] - 1.6).abs() < 1e-6);
    }

    #[test]
    fn malformed_ensembles_are_rejected() {
        let mut a = stumps(&[(0, Mode::Leq, 0.0, 1.0, 2.0)], 0);
        a.true_ids[0] = 0; // points to itself
        assert!(Forest::build(&a, 1)
            .unwrap_err()
            .to_string()
            .contains("cycle"));
        let mut a = stumps(&[(0, Mode::Leq, 0.0, 1.0, 2.0)], 0);
        a.false_ids[0] = 9;
        assert!(Forest::build(&a, 1)
            .unwrap_err()
            .to_string()
            .contains("missing child"));
        let mut a = stumps(&[(0, Mode::Leq, 0.0, 1.0, 2.0)], 3);
        assert!(Forest::build(&a, 1)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        a.leaf_target_ids = vec![0, 0];
        a.leaf_weights.pop();
        assert!(Forest::build(&a, 1).is_err());
        assert!(Mode::parse("BRANCH_SIDEWAYS").is_err());
    }
}

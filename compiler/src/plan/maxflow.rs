//! Maximum flow / minimum cut (Dinic's algorithm) over `u128` capacities.
//!
//! The recompute planner states "what to keep and what to recompute" as a minimum s-t cut (see
//! `recompute`); this is the solver. Capacities are `u128` so that byte counts of 100-billion-
//! parameter models times a Lagrange multiplier never overflow; `INF` marks edges that must never
//! be cut (a cut of `INF` or more means "infeasible").

/// A capacity that no feasible cut pays.
pub const INF: u128 = u128::MAX / 8;

#[derive(Clone, Debug)]
struct Edge {
    to: usize,
    cap: u128,
}

/// A flow network with nodes `0..n`.
#[derive(Clone, Debug)]
pub struct FlowNet {
    edges: Vec<Edge>,
    adj: Vec<Vec<usize>>,
}

impl FlowNet {
    pub fn new(n: usize) -> Self {
        FlowNet {
            edges: Vec::new(),
            adj: vec![Vec::new(); n],
        }
    }

    pub fn len(&self) -> usize {
        self.adj.len()
    }

    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }

    /// Adds the directed edge `a → b` with capacity `cap` (parallel edges are fine).
    pub fn add_edge(&mut self, a: usize, b: usize, cap: u128) {
        if cap == 0 || a == b {
            return;
        }
        self.adj[a].push(self.edges.len());
        self.edges.push(Edge { to: b, cap });
        self.adj[b].push(self.edges.len());
        self.edges.push(Edge { to: a, cap: 0 });
    }

    /// Runs max flow from `s` to `t`; returns the flow value (= the minimum cut's capacity, capped
    /// at `INF`) and the source side of a minimum cut (`true` = reachable from `s` in the residual
    /// graph). The source side returned is the smallest one, so ties go to the sink side.
    pub fn min_cut(mut self, s: usize, t: usize) -> (u128, Vec<bool>) {
        let n = self.adj.len();
        let mut flow: u128 = 0;
        let mut level = vec![usize::MAX; n];
        let mut it = vec![0usize; n];
        loop {
            // Breadth-first levels in the residual graph.
            level.iter_mut().for_each(|l| *l = usize::MAX);
            level[s] = 0;
            let mut queue = std::collections::VecDeque::from([s]);
            while let Some(u) = queue.pop_front() {
                for &e in &self.adj[u] {
                    let Edge { to, cap } = self.edges[e];
                    if cap > 0 && level[to] == usize::MAX {
                        level[to] = level[u] + 1;
                        queue.push_back(to);
                    }
                }
            }
            if level[t] == usize::MAX || flow >= INF {
                break;
            }
            it.iter_mut().for_each(|i| *i = 0);
            loop {
                let pushed = self.augment(s, t, INF, &level, &mut it);
                if pushed == 0 {
                    break;
                }
                flow = flow.saturating_add(pushed);
                if flow >= INF {
                    break;
                }
            }
        }
        let mut side = vec![false; n];
        side[s] = true;
        let mut stack = vec![s];
        while let Some(u) = stack.pop() {
            for &e in &self.adj[u] {
                let Edge { to, cap } = self.edges[e];
                if cap > 0 && !side[to] {
                    side[to] = true;
                    stack.push(to);
                }
            }
        }
        (flow.min(INF), side)
    }

    /// One blocking-flow path search, iterative so deep graphs cannot overflow the stack.
    fn augment(
        &mut self,
        s: usize,
        t: usize,
        limit: u128,
        level: &[usize],
        it: &mut [usize],
    ) -> u128 {
        let mut path: Vec<usize> = Vec::new();
        let mut u = s;
        loop {
            if u == t {
                let mut f = limit;
                for &e in &path {
                    f = f.min(self.edges[e].cap);
                }
                for &e in &path {
                    self.edges[e].cap -= f;
                    self.edges[e ^ 1].cap = self.edges[e ^ 1].cap.saturating_add(f);
                }
                return f;
            }
            let mut advanced = false;
            while it[u] < self.adj[u].len() {
                let e = self.adj[u][it[u]];
                let Edge { to, cap } = self.edges[e];
                if cap > 0 && level[to] == level[u].wrapping_add(1) {
                    path.push(e);
                    u = to;
                    advanced = true;
                    break;
                }
                it[u] += 1;
            }
            if !advanced {
                // Dead end: retreat one edge and skip it from now on.
                match path.pop() {
                    None => return 0,
                    Some(e) => {
                        u = self.edges[e ^ 1].to;
                        it[u] += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over every s-t partition of a small network.
    fn brute(n: usize, edges: &[(usize, usize, u128)], s: usize, t: usize) -> u128 {
        let mut best = u128::MAX;
        for mask in 0u32..(1 << n) {
            if mask & (1 << s) == 0 || mask & (1 << t) != 0 {
                continue;
            }
            let cut: u128 = edges
                .iter()
                .filter(|(a, b, _)| mask & (1 << a) != 0 && mask & (1 << b) == 0)
                .map(|e| e.2)
                .sum();
            best = best.min(cut);
        }
        best
    }

    #[test]
    fn matches_brute_force_on_small_random_networks() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let n = 2 + (next() % 7) as usize;
            let m = (next() % 16) as usize;
            let edges: Vec<(usize, usize, u128)> = (0..m)
                .map(|_| {
                    (
                        (next() % n as u64) as usize,
                        (next() % n as u64) as usize,
                        (next() % 10) as u128,
                    )
                })
                .collect();
            let mut net = FlowNet::new(n);
            for &(a, b, c) in &edges {
                net.add_edge(a, b, c);
            }
            let (flow, side) = net.min_cut(0, n - 1);
            assert_eq!(
                flow,
                brute(
                    n,
                    &edges
                        .iter()
                        .filter(|e| e.0 != e.1)
                        .copied()
                        .collect::<Vec<_>>(),
                    0,
                    n - 1
                )
            );
            // The returned side is a cut of that capacity.
            let cut: u128 = edges
                .iter()
                .filter(|(a, b, _)| side[*a] && !side[*b])
                .map(|e| e.2)
                .sum();
            assert_eq!(cut, flow);
        }
    }
}

//! What a run cost the machine: CPU time of this process.

/// User + system CPU seconds of this process so far, from /proc/self/stat
/// (clock ticks of 10 ms: the unit Linux reports to user space; getrusage
/// would need `unsafe`, which the workspace denies). NaN where unreadable.
pub(crate) fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // The fields after the command name (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) as f64 / CLOCK_TICKS_PER_SEC,
        _ => f64::NAN,
    }
}

/// USER_HZ, 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

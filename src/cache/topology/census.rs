//! How many nodes of each role the topology has, for `/metrics`.

use redis::RedisError;

use super::Connection;
use crate::config::RedisMode;

/// How many nodes of each role this replica sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nodes {
    pub masters: usize,
    pub replicas: usize,
}

/// Asks the topology how many masters and replicas it has: `CLUSTER NODES` in a cluster
/// (nodes marked failed are not counted), `ROLE` of the server or of the master otherwise.
pub async fn nodes(mode: RedisMode, conn: &mut Connection) -> Result<Nodes, RedisError> {
    if mode == RedisMode::Cluster {
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
        return Ok(count_cluster_nodes(&text));
    }
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
    // A master lists its replicas third; a replica (a master demoted under a connection that
    // has not noticed yet) is no master this replica can write to.
    Ok(match (role.first(), role.get(2)) {
        (Some(redis::Value::BulkString(kind)), Some(redis::Value::Array(replicas)))
            if kind.as_slice() == b"master" =>
        {
            Nodes {
                masters: 1,
                replicas: replicas.len(),
            }
        }
        _ => Nodes::default(),
    })
}

/// Counts the healthy masters and replicas in the text of `CLUSTER NODES`: one line a node,
/// its flags third (`myself,master`, `slave`, `master,fail`, ...).
fn count_cluster_nodes(text: &str) -> Nodes {
    let mut nodes = Nodes::default();
    for line in text.lines() {
        let Some(flags) = line.split_whitespace().nth(2) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if flags
            .iter()
            .any(|f| matches!(*f, "fail" | "fail?" | "noaddr"))
        {
            continue;
        }
        if flags.contains(&"master") {
            nodes.masters += 1;
        } else if flags.contains(&"slave") {
            nodes.replicas += 1;
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_counted_by_role_leaving_out_failed_ones() {
        let text = "\
07c37dfe 127.0.0.1:30004@31004 slave e7d1eecc 0 1426238317239 4 connected
67ed2db8 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b36 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec23923 127.0.0.1:30005@31005 slave 67ed2db8 0 1426238316232 5 connected
824fe116 127.0.0.1:30006@31006 master,fail? - 0 1426238317741 6 connected
e7d1eecc 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            count_cluster_nodes(text),
            Nodes {
                masters: 3,
                replicas: 2
            }
        );
        assert_eq!(count_cluster_nodes(""), Nodes::default());
    }
}

//! etcd 3.7's RangeStream: a range answered in chunks of bounded size, all at one
//! revision, with header, `more` and the count on the last chunk; unsupported options
//! answer Unimplemented (as do servers without it, etcd 3.5.1 among them, which is
//! what kube-apiserver falls back on).

mod common;

use common::raw::{self, RangeRequest, RangeStreamResponse};
use common::*;
use etcd_client::GetOptions;
use tonic::Code;

const PATH: &str = "/etcdserverpb.KV/RangeStream";

fn prefix_req(limit: i64) -> RangeRequest {
    RangeRequest {
        key: b"rs/".to_vec(),
        range_end: b"rs0".to_vec(),
        limit,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_stream_chunks_one_revision() {
    bounded("range stream", async {
        let f = start_etch(&[]);
        let ep = f.etch.endpoint();
        let mut c = client(&ep).await;
        for i in 0..3000 {
            c.put(format!("rs/{i:05}"), vec![b'x'; 1024], None)
                .await
                .expect("put");
        }
        c.put("rt/after", "outside the range", None)
            .await
            .expect("put");
        let want = c
            .get("rs/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get");
        let rev = want.header().expect("header").revision();

        let chunks: Vec<RangeStreamResponse> = raw::server_stream(&ep, PATH, prefix_req(0))
            .await
            .expect("range stream");
        assert!(
            chunks.len() >= 3,
            "3 MiB comes in several chunks: {}",
            chunks.len()
        );
        let parts: Vec<&raw::RangeResponse> = chunks
            .iter()
            .map(|c| c.range_response.as_ref().expect("a range response"))
            .collect();
        let (last, rest) = parts.split_last().expect("chunks");
        for p in rest {
            assert!(
                p.header.is_none() && p.count == 0 && !p.more,
                "only the last has these"
            );
        }
        assert_eq!(last.header.as_ref().expect("header").revision, rev);
        assert_eq!((last.count, last.more), (3000, false));
        let keys: Vec<Vec<u8>> = parts
            .iter()
            .flat_map(|p| p.kvs.iter().map(|k| k.key.clone()))
            .collect();
        let want_keys: Vec<Vec<u8>> = want.kvs().iter().map(|k| k.key().to_vec()).collect();
        assert_eq!(keys, want_keys, "the chunks are the range, in order");

        // A limit: that many keys, `more` set, the count of the whole range.
        let chunks: Vec<RangeStreamResponse> = raw::server_stream(&ep, PATH, prefix_req(2500))
            .await
            .expect("range stream");
        let n: usize = chunks
            .iter()
            .map(|c| c.range_response.as_ref().map_or(0, |r| r.kvs.len()))
            .sum();
        let last = chunks
            .last()
            .and_then(|c| c.range_response.as_ref())
            .expect("last");
        assert_eq!((n, last.more, last.count), (2500, true, 3000));

        // Count only: one chunk.
        let chunks: Vec<RangeStreamResponse> = raw::server_stream(
            &ep,
            PATH,
            RangeRequest {
                count_only: true,
                ..prefix_req(0)
            },
        )
        .await
        .expect("count");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].range_response.as_ref().expect("r").count, 3000);

        // At an older revision: the range as it was then.
        let old = raw::server_stream::<_, RangeStreamResponse>(
            &ep,
            PATH,
            RangeRequest {
                revision: rev - 1000,
                ..prefix_req(0)
            },
        )
        .await
        .expect("an older revision");
        let n: usize = old
            .iter()
            .map(|c| c.range_response.as_ref().map_or(0, |r| r.kvs.len()))
            .sum();
        let at_old = c
            .get(
                "rs/",
                Some(GetOptions::new().with_prefix().with_revision(rev - 1000)),
            )
            .await
            .expect("get at the older revision")
            .count();
        assert_eq!(n as i64, at_old);
        assert_eq!(
            old.last()
                .and_then(|c| c.range_response.as_ref())
                .map(|r| r.count),
            Some(at_old)
        );

        let e = raw::server_stream::<_, RangeStreamResponse>(
            &ep,
            PATH,
            RangeRequest {
                sort_order: 2,
                ..prefix_req(0)
            },
        )
        .await
        .expect_err("custom sort");
        assert_eq!(
            (e.code(), e.message()),
            (
                Code::Unimplemented,
                "RangeStream does not support custom sort orders"
            )
        );
        let e = raw::server_stream::<_, RangeStreamResponse>(&ep, PATH, RangeRequest::default())
            .await
            .expect_err("no key");
        assert_eq!(e.message(), "etcdserver: key is not provided");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_5_answers_unimplemented_for_kube_to_fall_back() {
    bounded("etcd 3.5.1", async {
        let etcd = RealEtcd::start();
        let _ = client(&etcd.endpoint()).await;
        let e = raw::server_stream::<_, RangeStreamResponse>(&etcd.endpoint(), PATH, prefix_req(0))
            .await
            .expect_err("etcd 3.5.1 has no RangeStream");
        assert_eq!(e.code(), Code::Unimplemented);
    })
    .await;
}

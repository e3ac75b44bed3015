//! Open slots and holds (migration 0023), the seam of self-service rescheduling and waitlist
//! backfill (issue 14): the EHR's free times as its last snapshot listed them, and a hold that
//! exactly one appointment wins, on either backend and across instances.
//!
//! A hold is one conditional `UPDATE` (free, or held with the hold expired): on PostgreSQL the row
//! lock and READ COMMITTED's re-check of the condition make a second concurrent hold see the first
//! and change nothing; on SQLite the one writer serialises them. The winner books the slot in the
//! EHR and marks it booked; a refusal releases it.

use jiff::Timestamp;
use medrelay_mapping::phi::Phi;
use medrelay_mapping::slots::OpenSlot;
use serde::Serialize;

use super::{Store, StoreResult, StoredRow, secs, ts};
use super::{on_db, on_tx};

/// What a slot is to medrelay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Listed free by the EHR's latest snapshot and not held.
    Free,
    /// Held for one appointment until `held_until` (a patient picked it; booking under way).
    Held,
    /// Booked in the EHR through medrelay.
    Booked,
    /// No longer listed by the EHR.
    Gone,
}

impl SlotState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Held => "held",
            SlotState::Booked => "booked",
            SlotState::Gone => "gone",
        }
    }

    fn parse(s: &str) -> SlotState {
        match s {
            "held" => SlotState::Held,
            "booked" => SlotState::Booked,
            "gone" => SlotState::Gone,
            _ => SlotState::Free,
        }
    }
}

/// A stored slot: the EHR's slot and where it stands here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSlot {
    /// Our id (what a signed list row names).
    pub id: i64,
    pub slot: OpenSlot,
    pub state: SlotState,
    /// The appointment a hold or booking is for.
    pub held_for: Option<i64>,
    pub held_until: Option<Timestamp>,
}

/// What a snapshot of open slots changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SlotImport {
    /// New slots, and known ones listed again (their times or practitioner may have changed).
    pub added: u64,
    pub updated: u64,
    /// Free slots the snapshot no longer lists (taken in the EHR, or removed).
    pub gone: u64,
}

const COLUMNS: &str = "id, source, slot_id, site, practitioner, service_type, location, start_at, end_at, \
     state, held_for, held_until";

fn stored(r: &StoredRow) -> StoredSlot {
    StoredSlot {
        id: r.get("id"),
        slot: OpenSlot {
            source: r.get("source"),
            slot_id: r.get("slot_id"),
            site: r.get("site"),
            practitioner: r.get("practitioner"),
            service_type: r.get::<Option<String>, _>("service_type").map(Phi::new),
            location: r.get("location"),
            start: ts(r.get("start_at")),
            end: ts(r.get("end_at")),
        },
        state: SlotState::parse(&r.get::<String, _>("state")),
        held_for: r.get("held_for"),
        held_until: r.get::<Option<i64>, _>("held_until").map(ts),
    }
}

impl Store {
    /// Applies a snapshot of `source`'s open slots (everything it lists is free, everything it
    /// no longer lists and is free here is gone; held and booked slots keep their state), in one
    /// transaction.
    // PHI: the service type is stored for matching, like the appointment's.
    #[allow(clippy::disallowed_methods)]
    pub async fn replace_open_slots(
        &self,
        source: &str,
        slots: &[OpenSlot],
        now: Timestamp,
    ) -> StoreResult<SlotImport> {
        let mut report = SlotImport::default();
        let mut tx = self.write_tx().await?;
        // Each snapshot of a source is one generation: what it did not list is older.
        let generation: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT COALESCE(MAX(seen_gen), 0) + 1 FROM slots WHERE source = $1"
        )
        .bind(source)
        .fetch_one(&mut *c)
        .await)?;
        for s in slots.iter().filter(|s| s.source == source) {
            let existed: Option<i64> = on_tx!(tx, |c| sqlx::query_scalar(
                "SELECT id FROM slots WHERE source = $1 AND slot_id = $2"
            )
            .bind(source)
            .bind(&s.slot_id)
            .fetch_optional(&mut *c)
            .await)?;
            on_tx!(tx, |c| {
                sqlx::query(
                "INSERT INTO slots (source, slot_id, site, practitioner, service_type, location, start_at, end_at, \
                 state, seen_gen, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'free', $10, $9) \
                 ON CONFLICT (source, slot_id) DO UPDATE SET site = excluded.site, practitioner = excluded.practitioner, \
                 service_type = excluded.service_type, location = excluded.location, start_at = excluded.start_at, \
                 end_at = excluded.end_at, seen_gen = excluded.seen_gen, updated_at = excluded.updated_at, \
                 state = CASE WHEN slots.state = 'gone' THEN 'free' ELSE slots.state END",
            )
            .bind(source)
            .bind(&s.slot_id)
            .bind(&s.site)
            .bind(&s.practitioner)
            .bind(s.service_type.as_ref().map(|t| t.expose().clone()))
            .bind(&s.location)
            .bind(secs(s.start))
            .bind(secs(s.end))
            .bind(secs(now))
            .bind(generation)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?;
            if existed.is_some() {
                report.updated += 1;
            } else {
                report.added += 1;
            }
        }
        report.gone = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE slots SET state = 'gone', updated_at = $1 WHERE source = $2 AND seen_gen < $3 \
             AND (state = 'free' OR (state = 'held' AND held_until < $1))"
        )
        .bind(secs(now))
        .bind(source)
        .bind(generation)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(report)
    }

    /// Slots of `site` starting in `[from, until)` that can be held now: free, or held with the
    /// hold expired. Earliest first.
    pub async fn open_slots(
        &self,
        site: &str,
        from: Timestamp,
        until: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<StoredSlot>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM slots WHERE site = $1 AND start_at >= $2 AND start_at < $3 \
             AND (state = 'free' OR (state = 'held' AND held_until < $4)) ORDER BY start_at, id LIMIT 500"
        );
        let rows = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(site)
            .bind(secs(from))
            .bind(secs(until))
            .bind(secs(now))
            .fetch_all(db)
            .await
            .map(|v| v.into_iter().map(StoredRow::from).collect::<Vec<_>>()))?;
        Ok(rows.iter().map(stored).collect())
    }

    /// One slot by our id.
    pub async fn slot(&self, id: i64) -> StoreResult<Option<StoredSlot>> {
        let sql = format!("SELECT {COLUMNS} FROM slots WHERE id = $1");
        let row = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .fetch_optional(db)
            .await
            .map(|r| r.map(StoredRow::from)))?;
        Ok(row.as_ref().map(stored))
    }

    /// Holds slot `id` for `appointment_id` until `until`. True for exactly one caller while the
    /// hold lasts (the first pick wins); false when the slot is held by someone else, booked or
    /// gone. Holding it again for the same appointment renews the hold.
    pub async fn hold_slot(
        &self,
        id: i64,
        appointment_id: i64,
        until: Timestamp,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let won = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE slots SET state = 'held', held_for = $1, held_until = $2, updated_at = $3 \
             WHERE id = $4 AND (state = 'free' OR (state = 'held' AND (held_until < $3 OR held_for = $1)))"
        )
        .bind(appointment_id)
        .bind(secs(until))
        .bind(secs(now))
        .bind(id)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })? == 1;
        tx.commit().await?;
        Ok(won)
    }

    /// The EHR booked slot `id` for the appointment holding it. False when the hold is not
    /// that appointment's (it expired and someone else holds it).
    pub async fn book_slot(
        &self,
        id: i64,
        appointment_id: i64,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let done = on_tx!(tx, |c| sqlx::query(
            "UPDATE slots SET state = 'booked', held_until = NULL, updated_at = $1 \
             WHERE id = $2 AND held_for = $3 AND state IN ('held', 'booked')"
        )
        .bind(secs(now))
        .bind(id)
        .bind(appointment_id)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?
            == 1;
        tx.commit().await?;
        Ok(done)
    }

    /// Gives up the hold of `appointment_id` on slot `id` (the EHR refused the booking, or the
    /// patient chose otherwise): the slot is free again.
    pub async fn release_slot(
        &self,
        id: i64,
        appointment_id: i64,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let done = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE slots SET state = 'free', held_for = NULL, held_until = NULL, updated_at = $1 \
             WHERE id = $2 AND held_for = $3 AND state = 'held'"
        )
        .bind(secs(now))
        .bind(id)
        .bind(appointment_id)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })? == 1;
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use jiff::SignedDuration;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn slot(id: &str, start: i64) -> OpenSlot {
        OpenSlot {
            source: "emr".into(),
            slot_id: id.into(),
            site: "ny".into(),
            practitioner: Some("Dr. Who".into()),
            service_type: Some(Phi::new("Office Visit".into())),
            location: None,
            start: at(start),
            end: at(start) + SignedDuration::from_mins(30),
        }
    }

    /// On either backend (`MEDRELAY_TEST_POSTGRES`), with two `Store`s on one database as two
    /// instances would have: snapshots add, update and retire slots; of many concurrent holds of
    /// one slot exactly one wins; a hold expires; booking needs the hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_and_holds_with_exactly_one_winner_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let location = super::super::testing::location(&dir.path().join("s.db"))
            .await
            .unwrap();
        let keys = Keys::from_secret(&[3u8; 32]);
        let a = Store::connect(&location, keys.clone()).await.unwrap();
        let b = Store::connect(&location, keys).await.unwrap();
        let day = 86_400;
        let first = a
            .replace_open_slots(
                "emr",
                &[slot("S1", day), slot("S2", 2 * day), slot("S3", 3 * day)],
                at(0),
            )
            .await
            .unwrap();
        assert_eq!((first.added, first.updated, first.gone), (3, 0, 0));
        let open = a
            .open_slots("ny", at(0), at(10 * day), at(0))
            .await
            .unwrap();
        assert_eq!(open.len(), 3);
        assert!(open[0].slot.service_type.is_some(), "kept for matching");
        let s1 = open[0].id;

        // Eight picks of S1 at once, from both instances: one hold.
        let mut picks = Vec::new();
        for n in 0..8i64 {
            let store = if n % 2 == 0 { a.clone() } else { b.clone() };
            picks.push(tokio::spawn(async move {
                store.hold_slot(s1, 100 + n, at(600), at(1)).await.unwrap()
            }));
        }
        let mut won = 0;
        for p in picks {
            won += usize::from(p.await.unwrap());
        }
        assert_eq!(won, 1, "exactly one pick holds the slot");
        let held = a.slot(s1).await.unwrap().unwrap();
        assert_eq!(held.state, SlotState::Held);
        let winner = held.held_for.unwrap();
        assert!(!b.hold_slot(s1, 999, at(600), at(2)).await.unwrap());
        assert!(
            b.hold_slot(s1, winner, at(900), at(2)).await.unwrap(),
            "renewed by its holder"
        );
        assert_eq!(
            a.open_slots("ny", at(0), at(10 * day), at(3))
                .await
                .unwrap()
                .len(),
            2,
            "a held slot is not offered"
        );
        // Past its hold, another appointment may take it; the old holder can no longer book.
        assert!(a.hold_slot(s1, 555, at(2000), at(901)).await.unwrap());
        assert!(!a.book_slot(s1, winner, at(902)).await.unwrap());
        assert!(a.book_slot(s1, 555, at(903)).await.unwrap());
        assert_eq!(a.slot(s1).await.unwrap().unwrap().state, SlotState::Booked);
        // A refused booking gives the slot back.
        let s2 = open[1].id;
        assert!(a.hold_slot(s2, 7, at(2000), at(904)).await.unwrap());
        assert!(a.release_slot(s2, 7, at(905)).await.unwrap());
        assert_eq!(a.slot(s2).await.unwrap().unwrap().state, SlotState::Free);

        // The next snapshot no longer lists S2 (taken in the EHR) nor S1 (booked: kept) and moves
        // S3: S2 is gone, S1 stays booked, S3 is updated, S4 is new.
        let mut moved = slot("S3", 3 * day + 3600);
        moved.practitioner = Some("Dr. No".into());
        let next = b
            .replace_open_slots("emr", &[moved, slot("S4", 4 * day)], at(1000))
            .await
            .unwrap();
        assert_eq!((next.added, next.updated, next.gone), (1, 1, 1));
        assert_eq!(a.slot(s2).await.unwrap().unwrap().state, SlotState::Gone);
        assert_eq!(a.slot(s1).await.unwrap().unwrap().state, SlotState::Booked);
        let open = a
            .open_slots("ny", at(0), at(10 * day), at(1001))
            .await
            .unwrap();
        let ids: Vec<&str> = open.iter().map(|s| s.slot.slot_id.as_str()).collect();
        assert_eq!(ids, ["S3", "S4"]);
        assert_eq!(open[0].slot.practitioner.as_deref(), Some("Dr. No"));
        assert!(
            !a.hold_slot(s2, 8, at(2000), at(1002)).await.unwrap(),
            "gone"
        );
        // Listed again, a gone slot is free again.
        let again = a
            .replace_open_slots("emr", &[slot("S2", 2 * day)], at(1100))
            .await
            .unwrap();
        assert_eq!((again.added, again.updated), (0, 1));
        assert_eq!(a.slot(s2).await.unwrap().unwrap().state, SlotState::Free);
        a.close().await;
        b.close().await;
    }
}

//! deploy/slurm against a real Slurm: a single-node cluster on 127.0.0.1 configured in a temp dir and started
//! here (slurmctld + slurmd, no accounting), an array of 4 shards with the tiny model, one task lost and
//! resubmitted alone, the merge — and the merged bundle equal to a one-process run. Skips, saying so, where
//! Slurm is not installed (`./build.sh setup` installs it).

use crate::common;
use common::cli::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    fn start() -> Option<Self> {
        let found = |p: &str| Command::new("sh").args(["-c", &format!("command -v {p}")]).output().is_ok_and(|o| o.status.success());
        if !["slurmctld", "slurmd", "sbatch", "scontrol"].iter().all(|p| found(p)) {
            eprintln!("SKIPPED: Slurm is not installed (apt-get install slurm-wlm; ./build.sh setup does it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let conf = dir.path().join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=tuwentest\nSlurmctldHost=localhost\nSlurmctldPort={}\nSlurmdPort={}\nAuthType=auth/none\n\
                 CredType=cred/none\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n\
                 AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/filetxt\nJobCompLoc={d}/jobcomp.txt\n\
                 SlurmUser=root\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
                 MinJobAge=600\nReturnToService=2\nNodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        let cluster = Cluster { dir, conf };
        assert!(cluster.cmd("slurmctld").args(["-f", s(&cluster.conf)]).status().unwrap().success(), "slurmctld");
        assert!(cluster.cmd("slurmd").args(["-f", s(&cluster.conf), "-N", "localhost"]).status().unwrap().success(), "slurmd");
        let start = Instant::now();
        loop {
            let out = cluster.cmd("sinfo").args(["-h", "-N", "-o", "%t"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                return Some(cluster);
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the node never became idle: {}", cluster.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn state(&self, job: &str) -> String {
        let out = self.cmd("scontrol").args(["show", "job", job]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().find_map(|w| w.strip_prefix("JobState=")).unwrap_or("UNKNOWN").to_string()
    }

    /// Waits until `job` reaches one of the end states and returns it.
    fn wait(&self, job: &str) -> String {
        let start = Instant::now();
        loop {
            let state = self.state(job);
            if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"].contains(&state.as_str()) {
                return state;
            }
            assert!(start.elapsed() < Duration::from_secs(180), "job {job} still {state}: {}", self.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // slurmd first, then the controller, by the PIDs they wrote.
        for pidfile in ["slurmd.pid", "slurmctld.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pidfile)) {
                let _ = Command::new("kill").arg(pid.trim()).status();
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

fn submit(cluster: &Cluster, args: &[&str]) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/submit.sh");
    let out = cluster.cmd("bash").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "submit.sh: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let id = |what: &str| text.lines().find_map(|l| l.strip_prefix(what)).unwrap().trim().to_string();
    (id("array "), id("merge "))
}

#[test]
fn an_array_job_indexes_like_one_process_even_when_a_task_is_lost() {
    let Some(cluster) = Cluster::start() else { return };
    let work = tempfile::tempdir().unwrap();
    // The real sample when ../shared has it, else generated images.
    let images = match shared("data/teddy2024-sample") {
        Some(shared) => shared.join("data/teddy2024-sample/ImageData"),
        None => {
            let dir = work.path().join("images");
            make_images(&dir, 24, 64, true);
            dir
        }
    };
    let model = tiny_model();
    let single = work.path().join("single.bundle");
    ok(tuwen(&["index", "images", "--model", s(&model), "--images", s(&images), "--out", s(&single)]));

    // The array held, three tasks let run, one cancelled (a lost node, a preemption): the merge must not run.
    let out = work.path().join("out");
    let common = ["--model", s(&model), "--images", s(&images), "--out", s(&out), "--shards", "4", "--tuwen", env!("CARGO_BIN_EXE_tuwen")];
    let (array, merge) = submit(&cluster, &[&common[..], &["--", "--hold"]].concat());
    for task in [0, 1, 3] {
        assert!(cluster.cmd("scontrol").args(["release", &format!("{array}_{task}")]).status().unwrap().success());
    }
    assert!(cluster.cmd("scancel").arg(format!("{array}_2")).status().unwrap().success());
    for task in [0, 1, 3] {
        assert_eq!(cluster.wait(&format!("{array}_{task}")), "COMPLETED", "task {task}: {}", cluster.logs());
    }
    assert_eq!(cluster.wait(&merge), "CANCELLED", "the merge waits on every task and is dropped when one fails");
    assert!(!out.join("gallery.bundle").exists());
    // Merging by hand refuses the incomplete set and names what is missing.
    let merged = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/merge.sbatch"))
        .env("TUWEN_OUT", &out)
        .env("TUWEN_SHARDS", "4")
        .env("TUWEN_BIN", env!("CARGO_BIN_EXE_tuwen"))
        .output()
        .unwrap();
    assert!(!merged.status.success());
    assert!(String::from_utf8_lossy(&merged.stderr).contains("missing shard(s) 2/4"), "{}", String::from_utf8_lossy(&merged.stderr));

    // The lost task alone, resubmitted, and a new merge.
    let (again, merge) = submit(&cluster, &[&common[..], &["--resubmit", "2"]].concat());
    assert_eq!(cluster.wait(&format!("{again}_2")), "COMPLETED", "{}", cluster.logs());
    assert_eq!(cluster.wait(&merge), "COMPLETED", "{}", cluster.logs());

    let (a, b) = (tuwen::bundle::Bundle::open(&single).unwrap(), tuwen::bundle::Bundle::open(&out.join("gallery.bundle")).unwrap());
    assert_eq!(a.ids, b.ids, "same ids, same order");
    assert_eq!(a.header.source, b.header.source);
    for i in 0..a.len() {
        assert_eq!(a.row(i), b.row(i), "row {i} ({})", a.ids[i]);
    }
}

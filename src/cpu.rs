//! What the CPU this process runs on reports about itself: its vendor, family and model, its
//! vector extensions and its cache sizes.
//!
//! The kernels choose from it where the best choice depends on the machine (how a batch of one
//! row reads its recurrent weight, for one), and `recur bench` prints it above its figures, so
//! that every timing names the CPU it came from. Cache sizes come from Linux's sysfs
//! (`/sys/devices/system/cpu/cpu0/cache`), else from CPUID's cache leaves (leaf 4 on Intel,
//! `0x8000001D` on AMD); a size neither reports is `None`.
//!
//! ```
//! let cpu = recur::cpu::CpuInfo::get();
//! // One line: brand, vendor, family and model, vector extensions, caches.
//! println!("{cpu}");
//! // A build for AVX2 runs only where the CPU has it.
//! assert!(cpu.features.avx2 || !cfg!(target_feature = "avx2"));
//! ```

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

/// The vector extensions the kernels care about, as the running CPU reports them (not as the
/// build was compiled: the kernels' SIMD types follow the build's target features).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// 256-bit AVX2 integer and float vectors.
    pub avx2: bool,
    /// Fused multiply-add (FMA3).
    pub fma: bool,
    /// 512-bit AVX-512 foundation.
    pub avx512f: bool,
    /// AVX512_BF16 (`vdpbf16ps`): the bf16 products of [`crate::Precision::Bf16`].
    pub avx512_bf16: bool,
    /// AMX tiles with bf16 products (`amx_tile` and `amx_bf16`).
    pub amx_bf16: bool,
}

impl Features {
    /// What the running CPU reports (all `false` off x86_64).
    pub fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            Features {
                avx2: has!("avx2"),
                fma: has!("fma"),
                avx512f: has!("avx512f"),
                avx512_bf16: has!("avx512bf16"),
                amx_bf16: amx_bf16(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features::default()
    }
}

/// AMX tiles with bf16 products, from CPUID leaf 7 (`edx` bits 22 and 24): std's detection
/// of them is not stable yet. Whether the OS grants the tile state is asked when AMX is used.
#[cfg(target_arch = "x86_64")]
fn amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Data cache sizes per cache instance in bytes, where the system reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caches {
    /// Level 1 data cache (one per core).
    pub l1d: Option<usize>,
    /// Level 2 cache (one per core on current x86 CPUs).
    pub l2: Option<usize>,
    /// Level 3 cache (shared by a group of cores).
    pub l3: Option<usize>,
}

impl Caches {
    /// Reads the caches of CPU 0 from a directory laid out as Linux's
    /// `/sys/devices/system/cpu/cpu0/cache`: `index0`, `index1`, ... each with the files
    /// `level`, `type` (`Data`, `Instruction` or `Unified`) and `size` (`32K`, `2048K`, ...).
    /// `None` where the directory is missing or names no data cache.
    ///
    /// ```
    /// use recur::cpu::Caches;
    /// let here = Caches::from_sysfs(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache"));
    /// println!("L2 per core: {:?} bytes", here.and_then(|c| c.l2));
    /// ```
    pub fn from_sysfs(dir: &Path) -> Option<Caches> {
        let mut caches = Caches::default();
        let mut found = false;
        for index in 0.. {
            let d = dir.join(format!("index{index}"));
            if !d.is_dir() {
                break;
            }
            let read = |f: &str| std::fs::read_to_string(d.join(f)).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let (Ok(level), Some(size)) = (level.trim().parse::<u32>(), parse_size(&size)) else {
                continue;
            };
            found |= caches.set(level, kind.trim() != "Instruction", size);
        }
        found.then_some(caches)
    }

    /// Reads the caches from CPUID's deterministic cache parameters: leaf 4 on Intel, leaf
    /// `0x8000001D` on AMD (both in the same format). `None` off x86_64 or where the CPU has
    /// neither leaf.
    pub fn from_cpuid(vendor: &str) -> Option<Caches> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid_count;
            let leaf = match vendor {
                "GenuineIntel" if std::arch::x86_64::__cpuid(0).eax >= 4 => 4,
                "AuthenticAMD" | "HygonGenuine"
                    if std::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_001D =>
                {
                    0x8000_001D
                }
                _ => return None,
            };
            // Subleaves until one reports no cache (type 0); a bound in case none does.
            let regs = (0..16).map(|sub| {
                let r = __cpuid_count(leaf, sub);
                [r.eax, r.ebx, r.ecx]
            });
            Caches::from_cache_leaves(regs)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = vendor;
            None
        }
    }

    /// Decodes CPUID cache-parameter subleaves, `[eax, ebx, ecx]` each, up to the first that
    /// reports no cache. `None` when none reports a data cache.
    ///
    /// ```
    /// use recur::cpu::Caches;
    /// // A unified level-2 cache of 8 ways x 1024 sets x 64-byte lines, then the end.
    /// let c = Caches::from_cache_leaves([[0x143, (7 << 22) | 63, 1023], [0, 0, 0]]).unwrap();
    /// assert_eq!(c.l2, Some(512 << 10));
    /// assert_eq!(c.l1d, None);
    /// ```
    pub fn from_cache_leaves(leaves: impl IntoIterator<Item = [u32; 3]>) -> Option<Caches> {
        let mut caches = Caches::default();
        let mut found = false;
        for [eax, ebx, ecx] in leaves {
            // Cache type: 0 none (the end of the list), 1 data, 2 instruction, 3 unified.
            let kind = eax & 0x1f;
            if kind == 0 {
                break;
            }
            let level = (eax >> 5) & 0x7;
            let ways = ((ebx >> 22) & 0x3ff) as usize + 1;
            let partitions = ((ebx >> 12) & 0x3ff) as usize + 1;
            let line = (ebx & 0xfff) as usize + 1;
            let sets = ecx as usize + 1;
            found |= caches.set(level, kind != 2, ways * partitions * line * sets);
        }
        found.then_some(caches)
    }

    /// Records a cache of `size` bytes at `level` (instruction caches are left out); whether it
    /// was one of the three kept.
    fn set(&mut self, level: u32, data: bool, size: usize) -> bool {
        let slot = match (level, data) {
            (1, true) => &mut self.l1d,
            (2, true) => &mut self.l2,
            (3, true) => &mut self.l3,
            _ => return false,
        };
        *slot = Some(size);
        true
    }
}

/// `"32K"`, `"2048K"`, `"32M"`, `"1G"` or a number of bytes, as sysfs writes cache sizes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit.trim() {
        "" => 0,
        "K" | "KB" | "KiB" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// What the CPU this process runs on reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// CPUID's vendor string: `AuthenticAMD`, `GenuineIntel`, ... (empty off x86_64).
    pub vendor: String,
    /// The brand string, as `lscpu`'s "Model name" shows it (`AMD EPYC`, `Intel(R) Xeon(R)
    /// ...`; empty where the CPU reports none).
    pub brand: String,
    /// The display family (base family, plus the extended family from family 15 up): 25 for
    /// AMD's Zen 3 and Zen 4, 26 for Zen 5, 6 for Intel's cores.
    pub family: u32,
    /// The display model (base model, plus the extended model for families 6 and 15 up).
    pub model: u32,
    /// Its vector extensions.
    pub features: Features,
    /// Its cache sizes.
    pub caches: Caches,
}

impl CpuInfo {
    /// The CPU this process runs on, read once and kept.
    pub fn get() -> &'static CpuInfo {
        static INFO: OnceLock<CpuInfo> = OnceLock::new();
        INFO.get_or_init(CpuInfo::detect)
    }

    /// Reads the CPU's report afresh (see [`CpuInfo::get`] for the kept one).
    pub fn detect() -> CpuInfo {
        let (vendor, brand, family, model) = identity();
        let caches = Caches::from_sysfs(Path::new("/sys/devices/system/cpu/cpu0/cache"))
            .or_else(|| Caches::from_cpuid(&vendor))
            .unwrap_or_default();
        CpuInfo {
            vendor,
            brand,
            family,
            model,
            features: Features::detect(),
            caches,
        }
    }
}

/// One core's peak rate of `f32` fused multiply-adds in GFLOP/s: the best of `trials` timings
/// of independent multiply-add chains (a millisecond or so each) on the calling thread. No
/// product can beat it; recur's benchmarks quote their rates against it, measured in the same
/// run, since a shared machine's rate drifts from one minute to the next.
///
/// ```
/// let peak = recur::cpu::fma_peak_gflops(3);
/// assert!(peak > 0.0);
/// ```
pub fn fma_peak_gflops(trials: usize) -> f64 {
    use crate::kernels::peak::{fma_chains, fma_chains_flops};
    const ROUNDS: usize = 100_000;
    best_rate(trials, fma_chains_flops(ROUNDS), || {
        std::hint::black_box(fma_chains(std::hint::black_box(ROUNDS)));
    })
}

/// The best of `trials` (at least one) rates of `run`, which does `flops` floating-point
/// operations, in GFLOP/s.
fn best_rate(trials: usize, flops: u64, mut run: impl FnMut()) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..trials.max(1) {
        let t = std::time::Instant::now();
        run();
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        best = best.max(flops as f64 / secs / 1e9);
    }
    best
}

/// One core's peak rate of bf16 products in GFLOP/s (two per product, as for f32's multiply-add):
/// the best of `trials` timings of independent chains of AVX512_BF16's `vdpbf16ps`, or why
/// this CPU cannot run them. Against [`fma_peak_gflops`] it bounds what bf16 training can
/// gain over f32 on this CPU: the instruction does twice the products of an f32 fused
/// multiply-add, but not at the same rate on every CPU (on an Intel Xeon, family 6 model 207,
/// it measured half the rate, so no faster than f32).
///
/// ```
/// match recur::cpu::bf16_peak_gflops(3) {
///     Ok(peak) => assert!(peak > 0.0),
///     Err(why) => assert!(why.to_string().contains("AVX512_BF16"), "{why}"),
/// }
/// ```
pub fn bf16_peak_gflops(trials: usize) -> Result<f64, crate::kernels::bf16::Bf16Unavailable> {
    use crate::kernels::bf16::Bf16Kernel;
    use crate::kernels::bf16::peak::{dot_chains, dot_chains_flops};
    const ROUNDS: usize = 50_000;
    let kernel = Bf16Kernel::detect()?;
    // A native kernel's chains do not fail.
    Ok(best_rate(trials, dot_chains_flops(ROUNDS), || {
        std::hint::black_box(dot_chains(kernel, std::hint::black_box(ROUNDS)).ok());
    }))
}

/// This CPU's peak rate of bf16 products against its peak rate of f32 fused multiply-adds
/// ([`bf16_peak_gflops`] over [`fma_peak_gflops`], the best of `trials` each), or why it
/// cannot run bf16 products. Below 1, training with [`Precision::Bf16`](crate::Precision)
/// is slower on this CPU than in f32 whatever the kernels do (0.50 on an Intel Xeon, family
/// 6 model 207); the command line says so when asked for bf16 there.
///
/// ```
/// if let Ok(ratio) = recur::cpu::bf16_against_f32(3) {
///     assert!(ratio > 0.0);
/// }
/// ```
pub fn bf16_against_f32(trials: usize) -> Result<f64, crate::kernels::bf16::Bf16Unavailable> {
    let bf16 = bf16_peak_gflops(trials)?;
    Ok(bf16 / fma_peak_gflops(trials))
}

/// Vendor, brand, display family and model from CPUID.
#[cfg(target_arch = "x86_64")]
fn identity() -> (String, String, u32, u32) {
    use std::arch::x86_64::__cpuid;
    let bytes = |regs: &[u32]| -> Vec<u8> { regs.iter().flat_map(|r| r.to_le_bytes()).collect() };
    let r0 = __cpuid(0);
    let vendor = String::from_utf8_lossy(&bytes(&[r0.ebx, r0.edx, r0.ecx])).into_owned();
    let (family, model) = if r0.eax >= 1 {
        display_family_model(__cpuid(1).eax)
    } else {
        (0, 0)
    };
    let brand = if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
        let regs: Vec<u32> = (0x8000_0002..=0x8000_0004u32)
            .flat_map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
            })
            .collect();
        let raw = bytes(&regs);
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).trim().to_string()
    } else {
        String::new()
    };
    (vendor, brand, family, model)
}

#[cfg(not(target_arch = "x86_64"))]
fn identity() -> (String, String, u32, u32) {
    (String::new(), String::new(), 0, 0)
}

/// The display family and model from CPUID leaf 1's `eax`, as Intel's and AMD's manuals
/// define them.
///
/// ```
/// use recur::cpu::display_family_model;
/// assert_eq!(display_family_model(0x00a0_0f11), (25, 1)); // AMD Zen 3
/// assert_eq!(display_family_model(0x000c_06f2), (6, 207)); // Intel Xeon, family 6 model 207
/// ```
pub fn display_family_model(eax: u32) -> (u32, u32) {
    let base_family = (eax >> 8) & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        base_model + (((eax >> 16) & 0xf) << 4)
    } else {
        base_model
    };
    (family, model)
}

/// `32 KiB`, `2 MiB`: a byte count in the largest binary unit that divides it.
fn bytes_text(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

impl fmt::Display for CpuInfo {
    /// One line: `AMD EPYC (AuthenticAMD family 25 model 1), avx2 fma, L1d 32 KiB, L2 512 KiB,
    /// L3 32 MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let brand = if self.brand.is_empty() {
            "unknown CPU"
        } else {
            &self.brand
        };
        write!(
            f,
            "{brand} ({} family {} model {})",
            if self.vendor.is_empty() {
                "unknown vendor"
            } else {
                &self.vendor
            },
            self.family,
            self.model
        )?;
        let ft = self.features;
        let names = [
            (ft.avx2, "avx2"),
            (ft.fma, "fma"),
            (ft.avx512f, "avx512f"),
            (ft.avx512_bf16, "avx512_bf16"),
            (ft.amx_bf16, "amx_bf16"),
        ];
        let on: Vec<&str> = names.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        write!(
            f,
            ", {}",
            if on.is_empty() {
                "no avx2".to_string()
            } else {
                on.join(" ")
            }
        )?;
        for (name, size) in [
            ("L1d", self.caches.l1d),
            ("L2", self.caches.l2),
            ("L3", self.caches.l3),
        ] {
            match size {
                Some(s) => write!(f, ", {name} {}", bytes_text(s))?,
                None => write!(f, ", {name} unknown")?,
            }
        }
        Ok(())
    }
}

/// The value in `names` that the environment variable `var` names, if it names one: the
/// switches (`RECUR_TILES`, `RECUR_SINGLE_ROW`, `RECUR_LOOP_ORDER`, `RECUR_COPY_A`) that force
/// one of the kernels' machine-dependent choices, for measuring one against the other. Each
/// caller reads its switch once.
pub(crate) fn env_choice<T: Copy>(var: &str, names: &[(&str, T)]) -> Option<T> {
    named_choice(std::env::var(var).ok().as_deref(), names)
}

/// The value in `names` that `value` names exactly; anything else, or no value, names none.
pub(crate) fn named_choice<T: Copy>(value: Option<&str>, names: &[(&str, T)]) -> Option<T> {
    let value = value?;
    names.iter().find(|(n, _)| *n == value).map(|&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_size("32K\n"), Some(32 << 10));
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12 KiB"), Some(12 << 10));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("3X"), None);
        assert_eq!(parse_size(""), None);
    }

    /// A sysfs cache directory written out: an AMD Zen 3's (32 KiB L1d and L1i, 512 KiB L2,
    /// 32 MiB L3), with a stray entry that is not a cache.
    #[test]
    fn caches_read_from_a_sysfs_directory() {
        let dir = std::env::temp_dir().join(format!("recur-cpu-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let entries = [
            (1, "Data", "32K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "512K"),
            (3, "Unified", "32768K"),
        ];
        for (i, (level, kind, size)) in entries.iter().enumerate() {
            let d = dir.join(format!("index{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.join("power")).unwrap();
        let c = Caches::from_sysfs(&dir).unwrap();
        assert_eq!(
            c,
            Caches {
                l1d: Some(32 << 10),
                l2: Some(512 << 10),
                l3: Some(32 << 20)
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Caches::from_sysfs(&dir), None);
    }

    /// CPUID leaf 0x8000001D of an AMD Zen 3 (subleaves 0-4), and leaf 4 of an Intel Xeon with
    /// 48 KiB L1d, 2 MiB L2 and 105 MiB L3 (subleaves 0-4).
    #[test]
    fn caches_decode_from_cpuid_leaves() {
        let zen3 = [
            [0x121, 0x01c0_003f, 0x3f],
            [0x122, 0x01c0_003f, 0x3f],
            [0x143, 0x01c0_003f, 0x3ff],
            [0x163, 0x03c0_003f, 0x7fff],
            [0, 0, 0],
        ];
        assert_eq!(
            Caches::from_cache_leaves(zen3),
            Some(Caches {
                l1d: Some(32 << 10),
                l2: Some(512 << 10),
                l3: Some(32 << 20)
            })
        );
        // 12 ways x 64 sets x 64 B; 16 ways x 2048 sets x 64 B; 15 ways x 114688 sets x 64 B.
        let xeon = [
            [0x121, (11 << 22) | 63, 63],
            [0x122, (7 << 22) | 63, 63],
            [0x143, (15 << 22) | 63, 2047],
            [0x163, (14 << 22) | 63, 114_687],
            [0, 0, 0],
        ];
        let c = Caches::from_cache_leaves(xeon).unwrap();
        assert_eq!(c.l1d, Some(48 << 10));
        assert_eq!(c.l2, Some(2 << 20));
        assert_eq!(c.l3, Some(105 << 20));
        // The list ends at the first subleaf with no cache; nothing before it, nothing found.
        assert_eq!(Caches::from_cache_leaves([[0, 1, 1], [0x143, 0, 0]]), None);
    }

    #[test]
    fn family_and_model_follow_the_manuals() {
        // AMD Zen 3 (family 0xf + 0xa = 25, model 1), Intel family 6 model 0xcf = 207, and an
        // older family-6 part without an extended model.
        assert_eq!(display_family_model(0x00a0_0f11), (25, 1));
        assert_eq!(display_family_model(0x000c_06f2), (6, 207));
        assert_eq!(display_family_model(0x0000_0695), (6, 9));
        // Below family 15 the extended family is not added; below 6 nor the extended model.
        assert_eq!(display_family_model(0x0ff5_0521), (5, 2));
    }

    #[test]
    fn one_line_names_the_cpu_and_its_caches() {
        let info = CpuInfo {
            vendor: "AuthenticAMD".into(),
            brand: "AMD EPYC".into(),
            family: 25,
            model: 1,
            features: Features {
                avx2: true,
                fma: true,
                ..Features::default()
            },
            caches: Caches {
                l1d: Some(32 << 10),
                l2: Some(512 << 10),
                l3: None,
            },
        };
        assert_eq!(
            info.to_string(),
            "AMD EPYC (AuthenticAMD family 25 model 1), avx2 fma, L1d 32 KiB, L2 512 KiB, \
             L3 unknown"
        );
    }

    /// The running machine: on x86_64 the vendor and the family are known, and the kept report
    /// is the one read afresh.
    #[test]
    fn the_running_cpu_reports_itself() {
        let info = CpuInfo::get();
        assert_eq!(info, &CpuInfo::detect());
        if cfg!(target_arch = "x86_64") {
            assert!(!info.vendor.is_empty() && info.family > 0, "{info}");
            // The build's own target features are a floor on what the CPU has.
            assert!(
                info.features.avx2 || !cfg!(target_feature = "avx2"),
                "{info}"
            );
            assert!(
                info.features.avx512f || !cfg!(target_feature = "avx512f"),
                "{info}"
            );
        }
    }
}

# study_common.gp - shared settings of the study plots (loaded by scripts/study_*.gp).
load dir.'/plot/meta.gp'
set terminal pngcairo noenhanced size 1500,560 font "DejaVu Sans,12" linewidth 1.3
set termoption noenhanced
set grid lc rgb "#dddddd"
set key box opaque
# eight well-separated colours (Okabe-Ito + grey), one per variant in study order
array C[9] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999", "#F0E442"]
col(i) = C[(i - 1) % 9 + 1]

# study_load.gp - expert load of each MoE variant on the validation split: for every domain
# (row), the share of its expert slots each expert (column) receives, averaged over MoE layers.
# A rule-based gate shows a diagonal; a balanced learned gate shows even rows.
load here.'/study_common.gp'
set output dir.'/load.png'
ncol = (nmoe < 3) ? nmoe : 3
nrow = int((nmoe + ncol - 1) / ncol)
set terminal pngcairo noenhanced font "DejaVu Sans,12" linewidth 1.3 size 560 * ncol + 80, 470 * nrow + 60
set multiplot layout nrow,ncol title sprintf("Study %s: expert load per domain (%% of the domain's expert slots)", study) font ",14"
set palette defined (0 "#ffffff", 25 "#9ecae1", 60 "#3182bd", 100 "#08306b")
set cbrange [0:100]
set grid noxtics noytics
unset key
set xlabel "expert"
set ytics () 
do for [d=1:ndom] { set ytics add (word(domains, d) d - 1) }
set yrange [ndom - 0.5 : -0.5]
do for [i=1:nmoe] {
  f = dir.'/plot/load_'.word(moe, i).'.dat'
  set xrange [-0.5 : int(word(moe_E, i)) - 0.5]
  set xtics 1
  set title word(moe, i)
  plot f matrix with image, '' matrix using 1:2:(sprintf("%.0f", $3)):($3 > 55 ? 0xffffff : 0x000000) with labels tc rgb variable font ",11"
}
unset multiplot

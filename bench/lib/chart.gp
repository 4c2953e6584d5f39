# bench/lib/chart.gp: the chart of bench/run.sh, MiB/s per client (0 where a
# client failed or is missing): on the left 127.0.0.1 without and with faults,
# on the right the WAN delay line (its own scale: 50 MiB/s is the cap).
#   gnuplot -e "datafile='...'; outfile='....png'; subtitle='...'" bench/lib/chart.gp
set terminal pngcairo size 1200,520 font "sans,10"
set output outfile
set multiplot layout 1,2 title "reliablewriter and its peers: upload MiB/s, median (higher is better)\n{/*0.8 ".subtitle."}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right noenhanced
set grid ytics
set ylabel "MiB/s"
set xtics nomirror noenhanced

stats datafile using 2 nooutput
top = STATS_max > 0 ? STATS_max * 1.3 : 1
set title "127.0.0.1, fake GCS (discard store)"
set yrange [0:top]
plot datafile using 2:xtic(1) title "no faults" lc rgb "#3b6ea5", \
     '' using 3 title "faults: a reset per 16 MiB" lc rgb "#d9822b"

set title "WAN: 20 ms one way, 50 MiB/s per connection"
set yrange [0:60]
plot datafile using 4:xtic(1) title "WAN" lc rgb "#5a9e4b", \
     50 with lines dt 2 lc rgb "#555555" title "the link's 50 MiB/s"
unset multiplot

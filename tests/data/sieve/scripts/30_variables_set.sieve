require ["variables", "fileinto"];
set "folder" "Archive";
set :lower "sub" "${folder}";
set :upper "loud" "work";
set :length "n" "four";
if header :contains "subject" "" { fileinto "${sub}"; }
if header :is "x-nothing" "${n}" { fileinto "${loud}"; }
